//go:build !linux

package server

import (
	"net"

	"github.com/stickyd/stickyd/relay"
)

// rawListenerFor returns ln: accepting with accept4(2) is Linux-only.
func rawListenerFor(ln net.Listener, engine relay.Engine) net.Listener { return ln }

// clientConn returns an accepted connection as the handshake takes it, or
// false for one that is not TCP.
func clientConn(c net.Conn) (relay.Conn, bool) {
	tc, ok := c.(*net.TCPConn)
	return tc, ok
}
