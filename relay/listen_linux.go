package relay

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawListener accepts with accept4(2) itself and returns Sockets: bare
// descriptors that the epoll engine takes as they are. A *net.TCPConn costs
// about ten system calls more per connection: netpoller registration and
// unregistration, getsockname, five setsockopts, and the engine's dup,
// fcntl and close. Measured: ~10% of the CPU per short connection.
//
// It waits on a dup of the listening socket, which the Go netpoller watches
// as an *os.File (a listener's own RawConn cannot wait). Close closes both
// descriptors.
//
// Accepted sockets inherit the listener's socket options, so keep-alive
// and TCP_NODELAY are set once, on the listener, to what package net sets
// on each accepted connection by default (tcpOptions).
type rawListener struct {
	*net.TCPListener // Addr; closed by Close
	file             *os.File
	rc               syscall.RawConn
	local            netip.AddrPort // the listening address, unless unspecified
	eng              *EpollEngine
	fn               func(fd uintptr) bool

	// results of fn; one goroutine calls Accept
	nfd int
	sa  unix.RawSockaddrAny
	err syscall.Errno
}

// Listener implements SocketMaker: it returns a listener over ln whose
// Accept returns Sockets of e, or ln itself when ln is not a TCP listener
// or its socket cannot be set up (options, dup). The returned listener
// owns ln (its Close closes ln). Accept must be called from one goroutine
// at a time.
func (e *EpollEngine) Listener(ln net.Listener) net.Listener {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return ln
	}
	src, err := tl.SyscallConn()
	if err != nil {
		return ln
	}
	var errno syscall.Errno
	if err := src.Control(func(fd uintptr) { errno = setTCPOptions(int32(fd)) }); err != nil || errno != 0 {
		return ln
	}
	file, err := DupListener(tl)
	if err != nil {
		return ln
	}
	l := &rawListener{TCPListener: tl, file: file, eng: e}
	if l.rc, err = l.file.SyscallConn(); err != nil {
		l.file.Close()
		return ln
	}
	l.local = listenerAddr(tl)
	l.fn = func(fd uintptr) bool {
		l.nfd, l.err = epAccept4(int32(fd), &l.sa)
		return l.err != unix.EAGAIN
	}
	return l
}

// epAccept4 accepts one connection, non-blocking and close-on-exec, its
// peer's address in sa. unix.Accept4 would add a getsockopt. RawSyscall,
// not Syscall: the socket is non-blocking, and Syscall's bookkeeping wakes
// the runtime's sysmon thread whenever it sleeps deeply, which then polls
// every 20 us for a while: measured, 5-7% of the CPU per short connection.
// Nothing puts a listener in blocking mode: an upgrade hands it over with
// DupListener, not net's File, whose Fd would clear O_NONBLOCK on the
// description this shares.
func epAccept4(fd int32, sa *unix.RawSockaddrAny) (int, syscall.Errno) {
	n := uint32(unix.SizeofSockaddrAny)
	r, _, e := syscall.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(sa)),
		uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	return int(r), e
}

// listenerAddr is tl's address as its accepted sockets' local address, or
// the zero AddrPort when tl listens on an unspecified address (a Socket
// then learns its own with getsockname when asked).
func listenerAddr(tl *net.TCPListener) netip.AddrPort {
	ap := tl.Addr().(*net.TCPAddr).AddrPort()
	if ap.Addr().IsUnspecified() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Accept implements net.Listener; it returns a *Socket.
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

// DupListener returns a duplicate of ln's socket (close-on-exec) as an
// *os.File that keeps the socket non-blocking: unlike net's File, whose Fd
// (called by exec on every ExtraFiles entry) clears O_NONBLOCK on the open
// file description the duplicate shares with ln. The raw accept loop
// (EpollEngine.Listener) and an upgrade's hand-over to a child both rely on
// that: accept4 is made with RawSyscall, which a blocking socket would hold
// a P in. The caller owns the file.
func DupListener(ln net.Listener) (*os.File, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("listener %s cannot be duplicated", ln.Addr())
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("dup listener %s: %w", ln.Addr(), err)
	}
	if derr != nil {
		return nil, fmt.Errorf("dup listener %s: %w", ln.Addr(), derr)
	}
	return os.NewFile(uintptr(dup), "listener"), nil
}
