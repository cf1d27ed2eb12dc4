package relay

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"
)

// The handshake's side of the socket seam: what a server does with an
// accepted connection before it hands it to an Engine, for a *net.TCPConn
// and for a Socket alike, so that it never needs to know which it holds.
// Each function asks the connection for a small interface (nowReader,
// addrPorter, tcpConner) that a Socket implements, and falls back to
// package net's way otherwise.

// ClientConn returns an accepted connection as an Engine takes it, or false
// for one that is not TCP (the caller closes it). The Accept of a listener
// from SocketMaker.Listener returns Sockets; a net.TCPListener's,
// *net.TCPConns.
func ClientConn(c net.Conn) (Conn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case *Socket:
		return c, true
	}
	return nil, false
}

// AddrPorts returns c's local and remote addresses, IPv4-mapped IPv6
// addresses unmapped. A Socket knows them already (no allocation).
func AddrPorts(c Conn) (local, remote netip.AddrPort) {
	if s, ok := c.(addrPorter); ok {
		return s.AddrPorts()
	}
	return addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
}

// addrPortOf returns a socket address with IPv4-mapped IPv6 normalised.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// TCPConn returns c as a *net.TCPConn, converting a Socket (which still
// owns it; see Socket.TCPConn). For code that needs package net's
// connection itself, such as an HTTP reader.
func TCPConn(c Conn) (*net.TCPConn, error) {
	if s, ok := c.(tcpConner); ok {
		return s.TCPConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		return tc, nil
	}
	return nil, errors.New("relay: not a TCP connection")
}

// ReadNow reads at most len(b) bytes that have arrived on c, without
// waiting and without a deadline: 0, nil when nothing has arrived, 0,
// io.EOF at the end of the stream. For sniffing a client's first bytes
// before its backend is dialed. It allocates nothing.
func ReadNow(c Conn, b []byte) (int, error) {
	if nr, ok := c.(nowReader); ok {
		return nr.ReadNow(b)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	r := nowReads.Get().(*nowRead)
	defer nowReads.Put(r)
	r.b = b
	err = rc.Read(r.fn)
	r.b = nil
	switch {
	case err != nil:
		return 0, err
	case r.err == syscall.EAGAIN:
		return 0, nil
	case r.err != 0:
		return 0, r.err
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// nowRead is one non-blocking read(2) through a net.Conn's RawConn; fn is
// bound once, so that a read allocates nothing.
type nowRead struct {
	b   []byte
	n   int
	err syscall.Errno
	fn  func(fd uintptr) bool
}

var nowReads = sync.Pool{New: func() any {
	r := &nowRead{}
	r.fn = func(fd uintptr) bool {
		n, _, e := syscall.Syscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.b))), uintptr(len(r.b)))
		r.n, r.err = int(n), e
		return true // one try: never wait
	}
	return r
}}
