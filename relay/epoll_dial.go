//go:build linux

package relay

import (
	"context"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DialTimeout connects to address within timeout (zero: no limit) unless
// ctx ends first, like net.Dialer.DialContext; it is the dialer the server
// hands to backend.Set.DialWith. It returns a *Socket that Start takes as
// it is. Only "tcp", "tcp4" and "tcp6" to an IP literal are dialed here;
// anything else (a host name, a unix socket) goes to a net.Dialer.
//
// A net.Conn would cost the engine, per connection, a netpoller registration
// and its removal, getsockname, getpeername, the dup, fcntl and close of
// epDetach, and the allocations and context plumbing of package net. Here a
// connection that completes inside connect(2) (loopback) needs no wait at
// all; otherwise the socket waits in one of the engine's own epoll sets,
// registered with EPOLLONESHOT (see epoll_wait.go): once the loop has
// reported the connection, the registration lies disabled, and Start
// re-arms it with one epoll_ctl instead of adding the socket again. The
// wait allocates nothing (pooled channel and timer). The socket gets the
// options package net gives a dialed TCP connection (tcpOptions).
func (e *EpollEngine) DialTimeout(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || network != "tcp" && network != "tcp4" && network != "tcp6" || e.closed.Load() {
		d := net.Dialer{Timeout: timeout}
		return d.DialContext(ctx, network, address)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	fail := func(err error) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if ap.Addr().Is4() != (network != "tcp6") && network != "tcp" {
		return fail(net.UnknownNetworkError(network + " for " + ap.Addr().String()))
	}
	fd, errno := epConnect(ap)
	if errno != 0 && errno != unix.EALREADY {
		return fail(os.NewSyscallError("connect", errno))
	}
	if errno == 0 { // connected at once: nothing registered, no wait
		return &Socket{fd: int(fd), remote: ap, eng: e}, nil
	}
	l := e.pick()
	events, err := l.wait(fd, unix.EPOLL_CTL_ADD, unix.EPOLLOUT, ctx.Done(), timeout)
	if err == errWaitTimeout {
		err = errDialTimeout
	} else if err == errWaitDone {
		err = ctx.Err()
	}
	if err != nil {
		epClose(fd)
		return fail(err)
	}
	if err := epConnectResult(fd, events); err != nil {
		epClose(fd)
		return fail(err)
	}
	return &Socket{fd: int(fd), remote: ap, eng: e, home: l}, nil
}

// epConnectResult is the outcome of a connect(2) whose wait reported
// events: nil once connected.
func epConnectResult(fd int32, events uint32) error {
	if events == unix.EPOLLOUT { // connected: a failure also reports EPOLLERR
		return nil
	}
	soerr, e := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
	switch {
	case e != nil:
		return os.NewSyscallError("getsockopt", e)
	case soerr != 0:
		return os.NewSyscallError("connect", syscall.Errno(soerr))
	case events&(unix.EPOLLOUT|unix.EPOLLHUP) != unix.EPOLLOUT:
		return os.NewSyscallError("connect", unix.ECONNREFUSED)
	}
	return nil
}

// epConnect makes a socket for ap and connects it as far as connect(2)
// goes without waiting: errno 0 once connected, EALREADY while the
// handshake goes on (fd open either way), any other errno when it failed
// (fd closed, -1).
func epConnect(ap netip.AddrPort) (int32, syscall.Errno) {
	fd, errno := epDialSocket(ap)
	if errno == unix.EINPROGRESS {
		// On loopback the whole handshake runs inside connect(2).
		errno = epConnectAgain(fd, ap)
	}
	if errno != 0 && errno != unix.EALREADY {
		if fd >= 0 {
			epClose(fd)
		}
		return -1, errno
	}
	return fd, errno
}

// epDialSocket makes a non-blocking TCP socket with package net's options
// (tcpOptions) for ap's family and starts connecting it. It returns the descriptor (or
// -1) and the errno of connect(2): 0 or EINPROGRESS on success.
func epDialSocket(ap netip.AddrPort) (int32, syscall.Errno) {
	family := unix.AF_INET6
	if ap.Addr().Is4() {
		family = unix.AF_INET
	}
	r, _, e := syscall.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	fd := int32(r)
	if e := setOptions(fd, dialOptions(ap.Addr())); e != 0 {
		return fd, e
	}
	var sa unix.RawSockaddrAny
	n := epSockaddr(&sa, ap)
	_, _, e = syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n))
	if e == unix.EINTR {
		e = unix.EINPROGRESS // the attempt goes on asynchronously
	}
	return fd, e
}

// epConnectAgain asks again after a connect(2) that returned EINPROGRESS:
// 0 once connected (EISCONN is reported as 0), EALREADY while in progress,
// or the error that ended the attempt (which this call consumes: the
// caller must report it). On loopback the whole three-way handshake runs in
// the first call's softirq, so this one system call saves the wait's
// epoll_ctl, two goroutine switches and the loop's wake-up.
func epConnectAgain(fd int32, ap netip.AddrPort) syscall.Errno {
	var sa unix.RawSockaddrAny
	n := epSockaddr(&sa, ap)
	_, _, e := syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n))
	if e == unix.EISCONN {
		return 0
	}
	return e
}

// dialOptions are the options of a socket dialed to addr: tcpOptions, but
// only TCP_NODELAY to a loopback address. There keep-alive probes test
// nothing (the peer is this kernel, which answers them while the backend
// hangs, and closes the socket itself when the backend dies), and four
// setsockopt(2) calls less are about 1% of a short connection's CPU.
func dialOptions(addr netip.Addr) []sockOpt {
	if addr.IsLoopback() {
		return tcpOptions[:1]
	}
	return tcpOptions[:]
}

// epSockaddr fills sa with ap and returns its length.
func epSockaddr(sa *unix.RawSockaddrAny, ap netip.AddrPort) int {
	port := ap.Port()
	if ap.Addr().Is4() {
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		in.Family = unix.AF_INET
		in.Port = port<<8 | port>>8
		in.Addr = ap.Addr().As4()
		return unix.SizeofSockaddrInet4
	}
	in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
	in.Family = unix.AF_INET6
	in.Port = port<<8 | port>>8
	in.Addr = ap.Addr().As16()
	return unix.SizeofSockaddrInet6
}

// errDialTimeout is what a dial that outlives its timeout returns, like
// package net's (a net.Error with Timeout true, wrapping
// os.ErrDeadlineExceeded).
var errDialTimeout error = &timeoutError{}

type timeoutError struct{}

func (*timeoutError) Error() string   { return "i/o timeout" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }
func (*timeoutError) Unwrap() error   { return os.ErrDeadlineExceeded }
