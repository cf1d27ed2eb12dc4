package integration_test

import (
	"net"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// A direct IPv6 client: the backend is told its IPv6 address, in v2 and v1.
func TestIPv6Client(t *testing.T) {
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			b := testkit.StartBackend(t, "only")
			ln, err := net.Listen("tcp", "[::1]:0")
			if err != nil {
				t.Skipf("no IPv6 loopback: %v", err)
			}
			addr := ln.Addr().String()
			ln.Close()
			startStickyd(t, "--backend", b.Flag(), "--send-proxy", v, "--listen", addr)
			c := testkit.Dial(t, "::1", addr) // the last --listen wins
			defer c.Close()
			_, got, _ := testkit.Greeting(t, c)
			if got.String() != c.LocalAddr().String() {
				t.Errorf("backend saw %s, client is %s", got, c.LocalAddr())
			}
		})
	}
}
