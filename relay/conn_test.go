package relay

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"golang.org/x/sys/unix"
)

// acceptOne accepts one connection on ln (a net listener, or one of
// EpollEngine.Listener) from a client dialed from 127.0.0.2.
func acceptOne(t *testing.T, ln net.Listener) (client *net.TCPConn, accepted net.Conn) {
	t.Helper()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		got <- c
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: testkit.Guard}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := testkit.Await(t, got, "no connection accepted")
	if a == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close() })
	return c.(*net.TCPConn), a
}

// The seam's functions give the same answers on a *net.TCPConn and on a
// Socket accepted by EpollEngine.Listener, which also sets package net's
// TCP options (inherited from the listener).
func TestSeamOnBothConns(t *testing.T) {
	eng, err := NewEpollEngine(EpollOptions{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	for name, wrap := range map[string]func(net.Listener) net.Listener{
		"net":   func(ln net.Listener) net.Listener { return ln },
		"epoll": eng.(SocketMaker).Listener,
	} {
		t.Run(name, func(t *testing.T) {
			ln := wrap(listen(t))
			client, accepted := acceptOne(t, ln)
			if _, socket := accepted.(*Socket); socket != (name == "epoll") {
				t.Fatalf("accepted a %T", accepted)
			}
			c, ok := ClientConn(accepted)
			if !ok {
				t.Fatalf("ClientConn(%T) refused a TCP connection", accepted)
			}
			local, remote := AddrPorts(c)
			if local.String() != ln.Addr().String() || remote.String() != client.LocalAddr().String() {
				t.Fatalf("AddrPorts = %v, %v; want %v, %v", local, remote, ln.Addr(), client.LocalAddr())
			}
			checkOptions(t, c)
			checkReadNow(t, client, c)
			if _, err := TCPConn(c); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// checkReadNow: nothing yet, then what the client sent, then the end.
func checkReadNow(t *testing.T, client *net.TCPConn, c Conn) {
	t.Helper()
	buf := make([]byte, 16)
	if n, err := ReadNow(c, buf); n != 0 || err != nil {
		t.Fatalf("ReadNow before any byte = %d, %v; want 0, nil", n, err)
	}
	client.Write([]byte("hello"))
	client.CloseWrite()
	var got []byte
	var err error
	testkit.WaitFor(t, "the client's bytes and end", func() bool {
		var n int
		n, err = ReadNow(c, buf)
		got = append(got, buf[:n]...)
		return err != nil
	}, testkit.Every(time.Millisecond))
	if err != io.EOF {
		t.Fatalf("ReadNow = %q so far, %v; want io.EOF at the end", got, err)
	}
	if string(got) != "hello" {
		t.Fatalf("ReadNow read %q, want hello", got)
	}
}

// checkOptions checks the options package net sets (tcpOptions) on c's
// descriptor: a Socket's own, before any conversion (which sets them anew).
func checkOptions(t *testing.T, c Conn) {
	t.Helper()
	var idle, nodelay int
	get := func(fd int) {
		idle, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		nodelay, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
	}
	if s, ok := c.(*Socket); ok {
		s.mu.Lock()
		get(s.fd)
		s.mu.Unlock()
	} else {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) { get(int(fd)) })
	}
	if idle != 15 || nodelay == 0 {
		t.Fatalf("%T: TCP_KEEPIDLE %d, TCP_NODELAY %d; want 15 and set, as package net sets them", c, idle, nodelay)
	}
}

// A Socket dialed by the engine has package net's options too.
func TestDialedSocketOptions(t *testing.T) {
	eng, err := NewEpollEngine(EpollOptions{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	ln := listen(t)
	c, err := eng.(SocketMaker).DialTimeout(context.Background(), "tcp", ln.Addr().String(), testkit.Guard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*Socket); !ok {
		t.Fatalf("DialTimeout returned a %T", c)
	}
	checkOptions(t, c.(Conn))
}

// A connection that is not TCP is refused.
func TestClientConnRefusesNonTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := ClientConn(a); ok {
		t.Fatal("ClientConn accepted a net.Pipe")
	}
}
