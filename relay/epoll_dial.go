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

// DialContext connects to address like net.Dialer.DialContext, for
// backend.Set.DialWith, and returns a *Socket that Start takes as it is.
// Only "tcp", "tcp4" and "tcp6" to an IP literal are dialed here; anything
// else (a host name, a unix socket) goes to a net.Dialer.
//
// A net.Conn would cost the engine, per connection, a netpoller registration
// and its removal, getsockname, getpeername, the dup, fcntl and close of
// epDetach, and the allocations and context plumbing of package net. Here
// the connecting socket waits in one of the engine's own epoll sets,
// registered with EPOLLONESHOT: once the loop has reported the connection,
// the registration lies disabled, and Start re-arms it with one epoll_ctl
// instead of adding the socket again. The socket gets the options package
// net gives a dialed TCP connection (TCP_NODELAY, keep-alive 15s/15s/9).
func (e *EpollEngine) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || network != "tcp" && network != "tcp4" && network != "tcp6" || e.closed.Load() {
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	fail := func(err error) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	if ap.Addr().Is4() != (network != "tcp6") && network != "tcp" {
		return fail(net.UnknownNetworkError(network + " for " + ap.Addr().String()))
	}
	fd, errno := epDialSocket(ap)
	if errno != 0 && errno != unix.EINPROGRESS {
		if fd >= 0 {
			epClose(fd)
		}
		return fail(os.NewSyscallError("connect", errno))
	}
	if errno == 0 { // connected at once: nothing registered
		return &Socket{fd: int(fd), remote: ap}, nil
	}
	l := e.loops[e.next.Add(1)%uint32(len(e.loops))]
	events, err := l.waitConnect(ctx, fd)
	if err != nil {
		return fail(err)
	}
	if events == unix.EPOLLOUT { // connected: a failure also reports EPOLLERR
		return &Socket{fd: int(fd), remote: ap, home: l}, nil
	}
	if soerr, e := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); e != nil || soerr != 0 || events&unix.EPOLLOUT == 0 {
		epClose(fd)
		switch {
		case e != nil:
			return fail(os.NewSyscallError("getsockopt", e))
		case soerr != 0:
			return fail(os.NewSyscallError("connect", syscall.Errno(soerr)))
		}
		return fail(os.NewSyscallError("connect", unix.ECONNREFUSED))
	}
	return &Socket{fd: int(fd), remote: ap, home: l}, nil
}

// epDialSocket makes a non-blocking TCP socket with package net's options
// for ap's family and starts connecting it. It returns the descriptor (or
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
	for _, o := range [...]struct{ level, opt, v int32 }{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int32(15 * time.Second / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int32(15 * time.Second / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
	} {
		v := o.v
		if _, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(o.level), uintptr(o.opt),
			uintptr(unsafe.Pointer(&v)), 4, 0); e != 0 {
			return fd, e
		}
	}
	var sa unix.RawSockaddrAny
	n := epSockaddr(&sa, ap)
	_, _, e = syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n))
	if e == unix.EINTR {
		e = unix.EINPROGRESS // the attempt goes on asynchronously
	}
	return fd, e
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

// epDial is a connect(2) in progress, waiting for its loop's report.
type epDial struct {
	events chan uint32 // the epoll events; 0: the engine closed
}

// epDialOut is the mask a connecting socket waits with.
const epDialOut = unix.EPOLLOUT | unix.EPOLLONESHOT

// waitConnect files fd in the loop's epoll set until it connects or fails,
// and returns the events epoll reported. On ctx's end it returns ctx's error
// and has closed fd.
func (l *epLoop) waitConnect(ctx context.Context, fd int32) (uint32, error) {
	w := &epDial{events: make(chan uint32, 1)}
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		epClose(fd)
		return 0, net.ErrClosed
	}
	l.dials[fd] = w
	l.mu.Unlock()
	if e := epCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, epDialOut); e != 0 {
		l.dropDial(fd, w)
		epClose(fd)
		return 0, os.NewSyscallError("epoll_ctl", e)
	}
	select {
	case ev := <-w.events:
		if ev == 0 {
			epClose(fd)
			return 0, net.ErrClosed
		}
		return ev, nil
	case <-ctx.Done():
		if !l.dropDial(fd, w) { // the loop has answered meanwhile
			if ev := <-w.events; ev != 0 {
				return ev, nil
			}
		}
		epClose(fd)
		return 0, ctx.Err()
	}
}

// dropDial forgets w; false if the loop took it first (and answers it).
func (l *epLoop) dropDial(fd int32, w *epDial) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dials[fd] != w {
		return false
	}
	delete(l.dials, fd)
	return true
}

// dialEvent answers the dial waiting on fd, if any. An event for a
// descriptor that is neither a pair's nor a dial's is stale: ignored.
func (l *epLoop) dialEvent(fd int32, events uint32) {
	l.mu.Lock()
	w := l.dials[fd]
	delete(l.dials, fd)
	l.mu.Unlock()
	if w != nil {
		if events == 0 { // 0 means "engine closed"
			events = unix.EPOLLERR
		}
		w.events <- events
	}
}

// failDials answers every dial still waiting: the engine is closing.
// Called with l.mu held.
func (l *epLoop) failDials() {
	for fd, w := range l.dials {
		delete(l.dials, fd)
		w.events <- 0
	}
}

// rearm re-enables a socket that waited for its connection in this loop's
// set (see DialContext) with the mask of a relayed socket.
func (l *epLoop) rearm(fd int) error {
	if e := epCtl(l.epfd, unix.EPOLL_CTL_MOD, int32(fd), epIn); e != 0 {
		return os.NewSyscallError("epoll_ctl mod", e)
	}
	return nil
}
