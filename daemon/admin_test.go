package daemon

import (
	"net"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// addrListener is a net.Listener that only has an address.
type addrListener struct {
	net.Listener
	addr net.Addr
}

func (l addrListener) Addr() net.Addr { return l.addr }

// An admin listener reachable beyond loopback without a token is warned
// about, with the fix; loopback, Unix sockets and a token are not.
func TestWarnAdminExposure(t *testing.T) {
	tests := []struct {
		addr  net.Addr
		token string
		warn  bool
	}{
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9000}, "", true},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 9000}, "", true},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 9000}, "", true},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9000}, "t0ken", false},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 9000}, "", false},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 9000}, "", false},
		{&net.UnixAddr{Name: "/run/stickyd/admin.sock", Net: "unix"}, "", false},
	}
	for _, tc := range tests {
		core, logs := observer.New(zap.WarnLevel)
		warnAdminExposure(addrListener{addr: tc.addr}, tc.token, zap.New(core))
		if got := logs.Len() == 1; got != tc.warn {
			t.Errorf("%v token %q: warned %v, want %v", tc.addr, tc.token, got, tc.warn)
		}
		if tc.warn && logs.Len() == 1 && logs.All()[0].ContextMap()["fix"] == nil {
			t.Errorf("%v: warning without a fix", tc.addr)
		}
	}
}
