package backend

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"go.uber.org/zap"
)

// holeSet is a set of a black hole and a listener that accepts, and client
// IPs whose first choice is the hole.
func holeSet(t *testing.T, opts Options) (*Set, []netip.Addr) {
	t.Helper()
	ok, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ok.Close() })
	set, err := NewSet([]Spec{{Name: "hole", Address: testkit.BlackHole(t)}, {Name: "ok", Address: ok.Addr().String()}}, opts, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	var ips []netip.Addr
	for i := 1; len(ips) < 8; i++ {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		if set.Preferred(ip).Name == "hole" {
			ips = append(ips, ip)
		}
	}
	return set, ips
}

// dialIn dials ip's backend on a goroutine and reports where it went:
// "ok", "ok after the timeout" if it waited for the 3 s connect timeout of
// the hole first, or an error.
func dialIn(set *Set, ip netip.Addr) chan string {
	ch := make(chan string, 1)
	go func() {
		start := time.Now()
		b, c, err := set.Dial(context.Background(), ip)
		if err != nil {
			ch <- err.Error()
			return
		}
		c.Close()
		b.Release()
		if time.Since(start) >= 2*time.Second {
			ch <- b.Name + " after the timeout"
			return
		}
		ch <- b.Name
	}()
	return ch
}

func recv(t *testing.T, ch chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(20 * time.Second):
		t.Fatal("dial hangs")
		return ""
	}
}

// While a dial to a backend has been pending for longer than slowDial,
// other clients skip it; after a cool-down, one probe dial at a time tries
// it while the others skip it.
func TestSlowDialAndProbeSkip(t *testing.T) {
	set, ips := holeSet(t, Options{DialTimeout: 3 * time.Second, Cooldown: 200 * time.Millisecond})
	hole := set.ByName("hole")
	first := dialIn(set, ips[0])
	deadline := time.Now().Add(10 * time.Second)
	for hole.dialing.Load() == 0 || time.Now().UnixNano()-hole.dialing.Load() <= int64(set.opts.slowDial()) {
		if time.Now().After(deadline) {
			t.Fatal("the first dial is not pending")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := recv(t, dialIn(set, ips[1])); got != "ok" {
		t.Errorf("while a dial to the hole is slow: %s, want ok at once", got)
	}
	if got := recv(t, first); got != "ok after the timeout" {
		t.Errorf("first client: %s, want ok after the connect timeout", got)
	}
	for time.Now().UnixNano() < hole.downUntil.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	probe := dialIn(set, ips[2])
	for !hole.probing.Load() {
		time.Sleep(time.Millisecond)
	}
	for _, ip := range ips[3:] {
		if got := recv(t, dialIn(set, ip)); got != "ok" {
			t.Errorf("during the probe: %s, want ok at once", got)
		}
	}
	if got := recv(t, probe); got != "ok after the timeout" {
		t.Errorf("probe: %s", got)
	}
	if n := hole.DialFailures(); n != 2 {
		t.Errorf("dial failures = %d, want 2 (the first dial and the probe)", n)
	}
	if hole.Up() || !hole.ejected.Load() {
		t.Errorf("after a failed probe: state %s, ejected %v; want a new cool-down", hole.State(), hole.ejected.Load())
	}
}
