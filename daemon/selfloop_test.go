package daemon

import (
	"net"
	"net/netip"
	"testing"
)

// What reaches the listener: with a specific listen address only that
// address; with a wildcard listen any loopback, unspecified or local
// interface address on its port (no socket is opened).
func TestSelfAddrs(t *testing.T) {
	specific := newSelfAddrs(&net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 3000})
	wildcard := newSelfAddrs(&net.TCPAddr{IP: net.IPv6zero, Port: 3000})
	for _, tc := range []struct {
		s    *selfAddrs
		addr string
		want bool
	}{
		{specific, "127.0.0.2:3000", true},
		{specific, "[::ffff:127.0.0.2]:3000", true},
		{specific, "127.0.0.1:3000", false},
		{specific, "127.0.0.2:3001", false},
		{wildcard, "127.0.0.1:3000", true},
		{wildcard, "127.9.9.9:3000", true},
		{wildcard, "[::1]:3000", true},
		{wildcard, "0.0.0.0:3000", true},
		{wildcard, "192.0.2.10:3000", false},
		{wildcard, "127.0.0.1:3001", false},
	} {
		if got := tc.s.is(netip.MustParseAddrPort(tc.addr)); got != tc.want {
			t.Errorf("listen %v: is(%s) = %v, want %v", tc.s.listen, tc.addr, got, tc.want)
		}
	}
	var none *selfAddrs
	if none.is(netip.MustParseAddrPort("127.0.0.1:3000")) {
		t.Error("a nil selfAddrs matched")
	}
}
