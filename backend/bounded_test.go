package backend

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
)

// boundedSet is a set of backends a, b and c on loopback listeners with
// the given balance factor, and a client IP whose preference order starts
// with a then b.
func boundedSet(t *testing.T, factor float64) (*Set, netip.Addr) {
	t.Helper()
	var specs []Spec
	for _, name := range []string{"a", "b", "c"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		specs = append(specs, Spec{Name: name, Address: ln.Addr().String()})
	}
	set, err := NewSet(specs, Options{DialTimeout: 5 * time.Second, BalanceFactor: factor}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 1<<16; i++ {
		ip := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		if order := set.table.Order(ip, nil); order[0] == 0 && order[1] == 1 {
			return set, ip
		}
	}
	t.Fatal("no client IP prefers a then b")
	return nil, netip.Addr{}
}

// dialHeld dials ip's backend and keeps the connection until the test ends.
func dialHeld(t *testing.T, set *Set, ip netip.Addr) string {
	t.Helper()
	b, conn, err := set.Dial(context.Background(), ip)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); b.Release() })
	return b.Name
}

// Bounded load moves a client off its backend once that backend holds more
// than ceil(factor x its share) of the connections, and the share is of the
// usable backends only (docs/balancer.md): with c draining and factor 1.25,
// a may hold ceil(1.25 x 2/2) = 2 of 2 connections, then the third goes to
// b (a share of all three backends' weight would have moved the second).
func TestDialBoundedLoadSharesUsableBackends(t *testing.T) {
	set, ip := boundedSet(t, 1.25)
	set.backends[2].SetDraining(true)
	var got []string
	for range 2 {
		got = append(got, dialHeld(t, set, ip))
	}
	if b := set.Lookup(ip); b == nil || b.Name != "b" {
		t.Errorf("Lookup with a at its bound = %v, want b", b)
	}
	got = append(got, dialHeld(t, set, ip))
	if want := []string{"a", "a", "b"}; got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("backends of three held connections = %v, want %v", got, want)
	}
}

// Without a factor every connection stays on the client's backend.
func TestDialUnboundedStaysPut(t *testing.T) {
	set, ip := boundedSet(t, 0)
	for range 4 {
		if got := dialHeld(t, set, ip); got != "a" {
			t.Fatalf("connection went to %s, want a", got)
		}
	}
}
