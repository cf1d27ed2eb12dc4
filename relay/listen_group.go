package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ListenTCP listens on a TCP address with a plain TCP socket. Since Go 1.24
// package net listens with Multipath TCP wherever the kernel has it
// (net.mptcp.enabled, on by default): the socket then takes the MPTCP
// accept path, which costs each connection more, and an MPTCP client's
// connection stays MPTCP. A proxy, like HAProxy and nginx, speaks plain
// TCP unless told otherwise, on every socket of the group (ListenGroup).
func ListenTCP(address string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", address)
}

// ListenGroup returns n listening sockets on ln's address that share its
// connections: ln itself, given SO_REUSEPORT, and n-1 new sockets bound
// with it (ln's family, protocol, IPV6_V6ONLY and backlog). The kernel
// then hands each new connection to one socket of the group, by a hash of
// its addresses, so that a loop accepting on a socket of its own wakes
// alone for it (EpollEngine.Accept).
//
// Only sockets with SO_REUSEPORT and the same user can join the group:
// another stickyd, whose listen does not set it, still gets "address
// already in use". The caller owns the new sockets; on error none is left
// open, and ln keeps SO_REUSEPORT only if it had it.
func ListenGroup(ln net.Listener, n int) ([]net.Listener, error) {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil, fmt.Errorf("relay: listen group: %s is not a TCP listener", ln.Addr())
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return nil, err
	}
	var sa unix.Sockaddr
	var v6only, proto, had int
	var serr error
	cerr := rc.Control(func(fd uintptr) { sa, v6only, proto, had, serr = prepareGroup(int(fd)) })
	if err := errors.Join(cerr, serr); err != nil {
		return nil, fmt.Errorf("relay: listen group on %s: %w", ln.Addr(), err)
	}
	group := []net.Listener{ln}
	for len(group) < n {
		sib, err := listenSibling(sa, v6only, proto)
		if err != nil {
			for _, l := range group[1:] {
				l.Close()
			}
			if had == 0 {
				rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 0) })
			}
			return nil, fmt.Errorf("relay: listen group on %s: %w", ln.Addr(), err)
		}
		group = append(group, sib)
	}
	return group, nil
}

// prepareGroup sets SO_REUSEPORT on a listening socket and returns its
// address, its IPV6_V6ONLY (IPv6 only), its protocol (TCP or MPTCP) and
// whether it had SO_REUSEPORT.
func prepareGroup(fd int) (sa unix.Sockaddr, v6only, proto, had int, err error) {
	if sa, err = unix.Getsockname(fd); err != nil {
		return nil, 0, 0, 0, os.NewSyscallError("getsockname", err)
	}
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		if v6only, err = unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err != nil {
			return nil, 0, 0, 0, os.NewSyscallError("getsockopt IPV6_V6ONLY", err)
		}
	}
	if proto, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
		return nil, 0, 0, 0, os.NewSyscallError("getsockopt SO_PROTOCOL", err)
	}
	if had, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT); err != nil {
		return nil, 0, 0, 0, os.NewSyscallError("getsockopt SO_REUSEPORT", err)
	}
	if err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return nil, 0, 0, 0, os.NewSyscallError("setsockopt SO_REUSEPORT", err)
	}
	return sa, v6only, proto, had, nil
}

// listenSibling opens one more socket of the group on sa, of protocol
// proto (IPPROTO_TCP or IPPROTO_MPTCP, as the group's first socket: every
// socket of the group accepts alike).
func listenSibling(sa unix.Sockaddr, v6only, proto int) (net.Listener, error) {
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close() // net.FileListener holds a dup
	for _, o := range [...]struct {
		level, opt, v int
		ok            bool
	}{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, true}, // as package net's listen
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, true},
		{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only, family == unix.AF_INET6},
	} {
		if o.ok {
			if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
				return nil, os.NewSyscallError("setsockopt", err)
			}
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, os.NewSyscallError("bind", err)
	}
	if err := unix.Listen(fd, listenBacklog()); err != nil {
		return nil, os.NewSyscallError("listen", err)
	}
	return net.FileListener(f)
}

// listenBacklog is the backlog package net gives a listener: the kernel's
// somaxconn.
func listenBacklog() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return unix.SOMAXCONN
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return unix.SOMAXCONN
	}
	return min(n, 1<<16-1)
}
