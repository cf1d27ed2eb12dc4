package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/stickyd/stickyd/backend"
)

// errSelfLoop: a backend's address is stickyd's own listener. Every
// connection to it would come back in and dial it again, until the
// connection cap is full.
var errSelfLoop = errors.New("backend address is stickyd's own listen address: connections would loop back into stickyd")

// selfAddrs tells whether an address reaches stickyd's own listener.
type selfAddrs struct {
	listen netip.AddrPort      // the listener's address; unspecified IP for a wildcard listen
	local  map[netip.Addr]bool // this host's interface addresses (wildcard listen only)
}

// newSelfAddrs describes the listener ln.
func newSelfAddrs(ln net.Addr) *selfAddrs {
	ta, ok := ln.(*net.TCPAddr)
	if !ok {
		return nil
	}
	ap := ta.AddrPort()
	s := &selfAddrs{listen: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	if s.listen.Addr().IsUnspecified() {
		s.local = make(map[netip.Addr]bool)
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				s.local[p.Addr().Unmap()] = true
			}
		}
	}
	return s
}

// is reports whether ap reaches the listener.
func (s *selfAddrs) is(ap netip.AddrPort) bool {
	if s == nil || ap.Port() != s.listen.Port() {
		return false
	}
	ip := ap.Addr().Unmap()
	if !s.listen.Addr().IsUnspecified() {
		return ip == s.listen.Addr()
	}
	return ip.IsLoopback() || ip.IsUnspecified() || s.local[ip]
}

// check returns an error wrapping errSelfLoop for the first backend whose
// address reaches the listener. A host name on the listener's port is
// resolved (within a few seconds) to tell.
func (s *selfAddrs) check(backends []*backend.Backend) error {
	if s == nil {
		return nil
	}
	for _, b := range backends {
		if ap, ok := s.reaches(b.Address); ok {
			return fmt.Errorf("%w: backend %s at %s reaches the listener %s; remove it or give it its own port",
				errSelfLoop, b.Name, ap, s.listen)
		}
	}
	return nil
}

// reaches returns the address of addr (host:port, or unix:/path) that
// reaches the listener, if any.
func (s *selfAddrs) reaches(addr string) (netip.AddrPort, bool) {
	if strings.HasPrefix(addr, "unix:") {
		return netip.AddrPort{}, false
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap, s.is(ap)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != fmt.Sprint(s.listen.Port()) {
		return netip.AddrPort{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	ips, _ := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	for _, ip := range ips {
		if ap := netip.AddrPortFrom(ip.Unmap(), s.listen.Port()); s.is(ap) {
			return ap, true
		}
	}
	return netip.AddrPort{}, false
}
