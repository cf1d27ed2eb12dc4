// Command blackhole measures how many clients a black-hole backend (a full
// listen backlog: SYNs dropped, every dial waits for its timeout) delays
// through stickyd with its defaults (5s connect timeout, 5s cool-down):
// 100 clients, one every GAP, from distinct loopback addresses, in front of
// two backends (ok, hole). Issue 11 item 9.
//
//	go build -o /tmp/stickyd . && go run ./bench/blackhole /tmp/stickyd 300ms
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: blackhole STICKYD-BINARY GAP")
		os.Exit(2)
	}
	bin := os.Args[1]
	gap, err := time.ParseDuration(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fd, _ := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	syscall.Listen(fd, 0)
	sa, _ := syscall.Getsockname(fd)
	hole := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	filler, _ := net.Dial("tcp", hole)
	defer filler.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.Write([]byte("ok\n")); time.Sleep(100 * time.Millisecond); c.Close() }()
		}
	}()
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l2.Addr().String()
	l2.Close()
	cmd := exec.Command(bin, "--listen", addr, "--backend", "ok="+ln.Addr().String(), "--backend", "hole="+hole,
		"--send-proxy", "none", "--log-level", "error")
	cmd.Dir = os.TempDir()
	cmd.Start()
	defer cmd.Process.Kill()
	time.Sleep(500 * time.Millisecond)
	var wg sync.WaitGroup
	var mu sync.Mutex
	delayed, failed := 0, 0
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := fmt.Sprintf("127.20.%d.%d", i/200, 1+i%200)
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 30 * time.Second}
			start := time.Now()
			c, err := d.Dial("tcp", addr)
			if err == nil {
				c.SetDeadline(time.Now().Add(30 * time.Second))
				_, err = bufio.NewReader(c).ReadString('\n')
				c.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
			} else if time.Since(start) >= 4*time.Second {
				delayed++
			}
		}()
		time.Sleep(gap)
	}
	wg.Wait()
	fmt.Printf("100 clients, one every %v: %d delayed >= 4 s (the 5 s connect timeout), %d failed\n", gap, delayed, failed)
}
