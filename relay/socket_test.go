//go:build linux

package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"golang.org/x/sys/unix"
)

// rawSocket turns the accepted side of a fresh connection into a bare
// non-blocking descriptor, as the server's accept4 gives it.
func rawSocket(t *testing.T, c *net.TCPConn) (fd int, local, remote netip.AddrPort) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil {
		t.Fatal(err)
	}
	local, remote = c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	c.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	return fd, local, remote
}

func epollRig(t *testing.T) (*EpollEngine, *rig) {
	t.Helper()
	eng, err := NewEpollEngine(EpollOptions{})
	if err != nil {
		t.Skip(err)
	}
	return eng.(*EpollEngine), newRig(t, eng)
}

// A Socket of the engine reads what has arrived without waiting, waits for
// more in a loop instead of converting itself, and is started with its
// dialed backend, Header and Pending first, the header not counted.
func TestSocketWaitsInEngineAndStarts(t *testing.T) {
	eng, r := epollRig(t)
	client, accepted := dialAccept(t, r.front)
	defer client.Close()
	s := eng.NewSocket(rawSocket(t, accepted))
	buf := make([]byte, 16)
	if n, err := s.ReadNow(buf); n != 0 || err != nil {
		t.Fatalf("ReadNow on a silent client = %d, %v", n, err)
	}
	go func() {
		time.Sleep(30 * time.Millisecond)
		client.Write([]byte("hello"))
	}()
	s.SetReadDeadline(time.Now().Add(testkit.Guard))
	n, err := s.Read(buf)
	if string(buf[:n]) != "hello" || err != nil {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if s.conn != nil || s.home == nil {
		t.Fatalf("the Socket converted itself (conn %v) or did not wait in a loop", s.conn)
	}
	s.SetReadDeadline(time.Time{})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bc, err := eng.DialTimeout(ctx, "tcp", r.back.Addr().String(), testkit.Guard)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := bc.(*Socket); !ok {
		t.Fatalf("DialTimeout returned a %T", bc)
	}
	backend, err := r.back.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	backend.SetDeadline(time.Now().Add(testkit.Guard))
	client.SetDeadline(time.Now().Add(testkit.Guard))
	done := make(chan Stats, 1)
	eng.Start(Pair{Client: s, Backend: bc.(Conn), Header: []byte("HDR "), Pending: []byte("hello"),
		Done: func(st Stats) { done <- st }})
	got := make([]byte, 9)
	if _, err := io.ReadFull(backend, got); err != nil || string(got) != "HDR hello" {
		t.Fatalf("backend got %q, %v", got, err)
	}
	backend.Write([]byte("pong"))
	if _, err := io.ReadFull(client, got[:4]); err != nil || string(got[:4]) != "pong" {
		t.Fatalf("client got %q, %v", got[:4], err)
	}
	client.Write([]byte("!"))
	client.CloseWrite()
	if b, err := io.ReadAll(backend); string(b) != "!" || err != nil {
		t.Fatalf("backend got %q, %v before EOF", b, err)
	}
	backend.CloseWrite()
	if st := testkit.Await(t, done, "pair not finished"); st.Err != nil || st.BytesIn != 6 || st.BytesOut != 4 {
		t.Errorf("Stats %+v, want 6 in (header not counted), 4 out", st)
	}
}

// A Read past its deadline fails with a timeout, and Close ends a Read
// waiting without one; neither converts the Socket.
func TestSocketDeadlineAndClose(t *testing.T) {
	eng, r := epollRig(t)
	client, accepted := dialAccept(t, r.front)
	defer client.Close()
	s := eng.NewSocket(rawSocket(t, accepted))
	s.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	_, err := s.Read(make([]byte, 4))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v", err)
	}
	s.SetReadDeadline(time.Time{})
	res := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 4))
		res <- err
	}()
	time.Sleep(30 * time.Millisecond)
	s.Close()
	if err := testkit.Await(t, res, "Close did not end the Read"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read ended by Close: %v", err)
	}
	if s.conn != nil {
		t.Error("the Socket converted itself")
	}
}

// A Socket without an engine converts itself when it must wait, and works
// as a net.Conn; both engines then relay it.
func TestSocketConverts(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		e, p := r.connect()
		s := NewSocket(rawSocket(t, p.Client.(*net.TCPConn)))
		p.Client = s
		s.SetReadDeadline(time.Now().Add(testkit.Guard))
		go e.client.Write([]byte("x"))
		b := make([]byte, 1)
		if _, err := io.ReadFull(s, b); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write([]byte("y")); err != nil {
			t.Fatal(err)
		}
		s.SetReadDeadline(time.Time{})
		r.eng.Start(*p)
		e.client.SetDeadline(time.Now().Add(testkit.Guard))
		e.backend.SetDeadline(time.Now().Add(testkit.Guard))
		e.client.Write([]byte("ab"))
		got := make([]byte, 2)
		if _, err := io.ReadFull(e.backend, got); err != nil || string(got) != "ab" {
			t.Fatalf("backend got %q, %v", got, err)
		}
		e.client.Close()
		e.backend.Close()
		testkit.Await(t, e.done, "pair not finished")
	})
}

// DialTimeout reports refused connections and ended contexts like
// net.Dialer, and hands names it cannot dial itself to one.
func TestDialTimeoutErrors(t *testing.T) {
	eng, _ := epollRig(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := eng.DialTimeout(context.Background(), "tcp", addr, testkit.Guard); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("dial a closed port: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := eng.DialTimeout(ctx, "tcp", addr, testkit.Guard); !errors.Is(err, context.Canceled) {
		t.Errorf("dial with an ended context: %v", err)
	}
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	c, err := eng.DialTimeout(context.Background(), "tcp", "localhost:"+port, testkit.Guard)
	if err != nil {
		t.Fatalf("dial a host name: %v", err)
	}
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("a host name was dialed as a %T, want a *net.TCPConn", c)
	}
	c.Close()
}

// A Socket given no local address (an accept on an unspecified listening
// address, a dial) learns it from the socket; a given one is kept.
func TestSocketAddrPorts(t *testing.T) {
	ln := listen(t)
	client, accepted := dialAccept(t, ln)
	defer client.Close()
	defer accepted.Close()
	rc, err := accepted.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	dup := func() int {
		fd := -1
		rc.Control(func(f uintptr) { fd, err = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) })
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	remote := client.LocalAddr().(*net.TCPAddr).AddrPort()
	want := ln.Addr().(*net.TCPAddr).AddrPort()

	s := NewSocket(dup(), netip.AddrPort{}, remote)
	defer s.Close()
	if l, r := s.AddrPorts(); l != want || r != remote {
		t.Errorf("no local given: AddrPorts = %v, %v; want %v, %v", l, r, want, remote)
	}
	given := netip.MustParseAddrPort("192.0.2.1:80")
	g := NewSocket(dup(), given, remote)
	defer g.Close()
	if l, _ := g.AddrPorts(); l != given {
		t.Errorf("local given: AddrPorts local = %v, want %v", l, given)
	}
}
