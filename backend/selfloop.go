package backend

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrSelfLoop is wrapped by the dial error of a backend whose host name
// resolved to stickyd's own listener (Options.IsSelf): the connection is
// closed at once instead of looping back into stickyd, and the backend is
// treated as failed (cool-down).
var ErrSelfLoop = errors.New("backend: address resolved to stickyd's own listener (a loop)")

// notSelf closes conn and returns an error wrapping ErrSelfLoop when b's
// address is a host name that reached the listener. Addresses that are IP
// literals are checked once, when the set is built, by the caller.
func (s *Set) notSelf(b *Backend, conn net.Conn) error {
	d := b.dest.Load()
	if s.opts.IsSelf == nil || d.network != "tcp" {
		return nil
	}
	if _, err := netip.ParseAddrPort(d.addr); err == nil {
		return nil
	}
	ta, ok := conn.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return nil
	}
	ap := ta.AddrPort()
	if ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()); !s.opts.IsSelf(ap) {
		return nil
	}
	conn.Close()
	return fmt.Errorf("%w: %s is %s", ErrSelfLoop, d.address, ap)
}
