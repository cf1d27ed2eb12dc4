package relay

import (
	"context"
	"io"
	"net"
	"net/netip"
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
			checkOptions(t, c, true)
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
// keepAlive false wants TCP_NODELAY alone (a dial to loopback, see
// dialOptions).
func checkOptions(t *testing.T, c Conn, keepAlive bool) {
	t.Helper()
	var idle, ka, nodelay int
	get := func(fd int) {
		idle, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		ka, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
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
	if nodelay == 0 {
		t.Errorf("%T: TCP_NODELAY not set", c)
	}
	if keepAlive && (ka == 0 || idle != 15) {
		t.Errorf("%T: SO_KEEPALIVE %d, TCP_KEEPIDLE %d; want set and 15, as package net sets them", c, ka, idle)
	}
	if !keepAlive && ka != 0 {
		t.Errorf("%T: SO_KEEPALIVE set on a loopback dial", c)
	}
}

// A Socket dialed by the engine has TCP_NODELAY, and no keep-alive to a
// loopback address, where probes test nothing.
func TestDialedSocketOptions(t *testing.T) {
	eng, err := NewEpollEngine(EpollOptions{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	for _, network := range []string{"tcp4", "tcp6"} {
		ln, err := net.Listen(network, map[string]string{"tcp4": "127.0.0.1:0", "tcp6": "[::1]:0"}[network])
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := eng.(SocketMaker).DialTimeout(context.Background(), "tcp", ln.Addr().String(), testkit.Guard)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, ok := c.(*Socket); !ok {
			t.Fatalf("DialTimeout returned a %T", c)
		}
		checkOptions(t, c.(Conn), false)
	}
}

// Off loopback a dial gets all of package net's options. (Checked on the
// choice itself: tests dial nothing but loopback.)
func TestDialOptions(t *testing.T) {
	for addr, want := range map[string]int{"127.0.0.1": 1, "127.9.9.9": 1, "::1": 1,
		"10.0.0.1": len(tcpOptions), "192.0.2.7": len(tcpOptions), "2001:db8::1": len(tcpOptions)} {
		opts := dialOptions(netip.MustParseAddr(addr))
		if len(opts) != want || opts[0].opt != unix.TCP_NODELAY {
			t.Errorf("dialOptions(%s) = %v, want the first %d of tcpOptions", addr, opts, want)
		}
	}
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
