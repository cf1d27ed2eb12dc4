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
	gap, err := time.ParseDuration(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := run(os.Args[1], gap); err != nil {
		fmt.Fprintln(os.Stderr, "blackhole:", err)
		os.Exit(1)
	}
}

// run starts the two backends and stickyd, then measures.
func run(bin string, gap time.Duration) error {
	hole, closeHole, err := blackHole()
	if err != nil {
		return err
	}
	defer closeHole()
	ok, err := okBackend()
	if err != nil {
		return err
	}
	defer ok.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--listen", addr, "--backend", "ok="+ok.Addr().String(), "--backend", "hole="+hole,
		"--send-proxy", "none", "--log-level", "error")
	cmd.Dir = os.TempDir()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	time.Sleep(500 * time.Millisecond) // stickyd listening
	delayed, failed := clients(addr, gap)
	fmt.Printf("100 clients, one every %v: %d delayed >= 4 s (the 5 s connect timeout), %d failed\n", gap, delayed, failed)
	return nil
}

// blackHole is a loopback listener whose backlog (0) one connection fills:
// every later SYN is dropped. It returns its address and a closer.
func blackHole() (string, func(), error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return "", nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return "", nil, err
	}
	if err := syscall.Listen(fd, 0); err != nil {
		return "", nil, err
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return "", nil, err
	}
	hole := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	filler, err := net.Dial("tcp", hole)
	if err != nil {
		return "", nil, err
	}
	return hole, func() { filler.Close(); syscall.Close(fd) }, nil
}

// okBackend answers every connection with "ok\n" and closes it.
func okBackend() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.Write([]byte("ok\n")); time.Sleep(100 * time.Millisecond); c.Close() }()
		}
	}()
	return ln, nil
}

// clients runs 100 clients, one every gap, each from its own loopback
// address, and counts those answered after 4 s or more, and those failed.
func clients(addr string, gap time.Duration) (delayed, failed int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := askOnce(fmt.Sprintf("127.20.%d.%d", i/200, 1+i%200), addr)
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
	return delayed, failed
}

// askOnce connects from ip to addr and reads one line.
func askOnce(ip, addr string) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 30 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = bufio.NewReader(c).ReadString('\n')
	return err
}
