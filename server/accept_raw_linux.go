package server

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/stickyd/stickyd/relay"
	"golang.org/x/sys/unix"
)

// rawListener accepts with accept4(2) itself and returns relay.Sockets: bare
// descriptors that the epoll engine takes as they are. A *net.TCPConn costs
// about ten system calls more per connection: netpoller registration and
// unregistration, getsockname, five setsockopts, and the engine's dup,
// fcntl and close. Measured: ~10% of the CPU per short connection.
//
// It waits on a dup of the listening socket, which the Go netpoller watches
// as an *os.File (a listener's own RawConn cannot wait). Close closes both
// descriptors; Serve owns the listener, so nothing else closes it.
//
// Accepted sockets inherit the listener's socket options, so keep-alive
// and TCP_NODELAY are set once, on the listener, to what package net sets
// on each accepted connection by default.
type rawListener struct {
	*net.TCPListener // Addr; closed by Close
	file             *os.File
	rc               syscall.RawConn
	local            netip.AddrPort // the listening address, unless unspecified
	eng              *relay.EpollEngine
	fn               func(fd uintptr) bool

	// results of fn; Serve is the only caller of Accept
	nfd int
	sa  unix.RawSockaddrAny
	err syscall.Errno
}

// rawListenerFor returns a rawListener over ln for the epoll engine, or ln
// itself: for another engine (which would convert each Socket back into a
// *net.TCPConn), when ln is not a TCP listener, or when the dup fails.
func rawListenerFor(ln net.Listener, engine relay.Engine) net.Listener {
	tl, ok := ln.(*net.TCPListener)
	eng, epoll := engine.(*relay.EpollEngine)
	if !ok || !epoll {
		return ln
	}
	src, err := tl.SyscallConn()
	if err != nil {
		return ln
	}
	var oerr error
	if err := src.Control(func(fd uintptr) { oerr = inheritedOptions(int(fd)) }); err != nil || oerr != nil {
		return ln
	}
	file, err := DupListener(tl)
	if err != nil {
		return ln
	}
	l := &rawListener{TCPListener: tl, file: file, eng: eng}
	if l.rc, err = l.file.SyscallConn(); err != nil {
		l.file.Close()
		return ln
	}
	if ap := tl.Addr().(*net.TCPAddr).AddrPort(); !ap.Addr().IsUnspecified() {
		l.local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	// unix.Accept4 would add a getsockopt. RawSyscall, not Syscall: the
	// socket is non-blocking, and Syscall's bookkeeping wakes the runtime's
	// sysmon thread whenever it sleeps deeply, which then polls every 20 us
	// for a while: measured, 5-7% of the CPU per short connection. Nothing
	// puts the listener in blocking mode: an upgrade hands it over with
	// DupListener, not net's File, whose Fd would clear O_NONBLOCK on the
	// description this shares.
	l.fn = func(fd uintptr) bool {
		n := uint32(unix.SizeofSockaddrAny)
		r, _, e := syscall.RawSyscall6(unix.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&l.sa)),
			uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		l.nfd, l.err = int(r), e
		return e != unix.EAGAIN
	}
	return l
}

// inheritedOptions sets on a listening socket the options package net sets
// on every accepted connection by default (keep-alive 15s/15s/9, no Nagle);
// accepted sockets inherit them.
func inheritedOptions(fd int) error {
	for _, o := range [...]struct{ level, opt, v int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(15 * time.Second / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(15 * time.Second / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return err
		}
	}
	return nil
}

// Accept implements net.Listener; it returns a *relay.Socket.
func (l *rawListener) Accept() (net.Conn, error) {
	for {
		if err := l.rc.Read(l.fn); err != nil {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: err}
		}
		switch l.err {
		case 0:
		case unix.ECONNABORTED, unix.EINTR: // gone before it was accepted
			continue
		default:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", l.err)}
		}
		// On an unspecified listening address, l.local is not valid: the
		// Socket learns its local address (getsockname) when the handshake
		// first asks for it.
		return l.eng.NewSocket(l.nfd, l.local, rawAddrPort(&l.sa)), nil
	}
}

// Close implements net.Listener: it closes the dup and the listener.
func (l *rawListener) Close() error {
	l.file.Close()
	return l.TCPListener.Close()
}

// rawAddrPort decodes an IPv4 or IPv6 socket address.
func rawAddrPort(sa *unix.RawSockaddrAny) netip.AddrPort {
	switch sa.Addr.Family {
	case unix.AF_INET:
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(in.Addr), in.Port<<8|in.Port>>8)
	case unix.AF_INET6:
		in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom16(in.Addr).Unmap(), in.Port<<8|in.Port>>8)
	}
	return netip.AddrPort{}
}

// clientConn returns an accepted connection as the handshake takes it, or
// false for one that is not TCP.
func clientConn(c net.Conn) (relay.Conn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case *relay.Socket:
		return c, true
	}
	return nil, false
}
