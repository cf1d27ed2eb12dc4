package balancer

import (
	"math"
	"net/netip"
	"testing"
)

// TestPickBoundedCap places many connections one by one, as a proxy would,
// with skewed clients: no backend may exceed ceil(factor * average), and a
// client leaves its own backend only when that backend is full.
func TestPickBoundedCap(t *testing.T) {
	const n, conns = 16, 20000
	for _, factor := range []float64{1, 1.25, 2} {
		tab := mustNew(t, names(n), Options{})
		load := make([]int64, n)
		active := func(i int) int64 { return load[i] }
		// A few hot clients open most connections.
		ips := randomV4(50, 11)
		var total int64
		for c := range conns {
			ip := ips[(c*c)%len(ips)%7]
			if c%3 == 0 {
				ip = ips[c%len(ips)]
			}
			i := tab.PickBounded(ip, nil, active, total, factor)
			limit := int64(math.Ceil(factor * float64(total+1) / n))
			if load[i]+1 > limit {
				t.Fatalf("factor %v: backend %d would hold %d > %d", factor, i, load[i]+1, limit)
			}
			if first := tab.Pick(ip, nil); first != i && load[first]+1 <= limit {
				t.Fatalf("factor %v: moved off backend %d that had room", factor, first)
			}
			load[i]++
			total++
		}
	}
}

// TestPickBoundedOrder checks that overflow goes down the client's own
// preference order, skipping unusable backends.
func TestPickBoundedOrder(t *testing.T) {
	tab := mustNew(t, names(8), Options{})
	ip := netip.MustParseAddr("2001:db8::7")
	order := tab.Order(ip, nil)
	load := make([]int64, 8)
	load[order[0]] = 10 // over any bound
	load[order[2]] = 10
	down := order[1]
	usable := func(i int) bool { return i != down }
	if got := tab.PickBounded(ip, usable, func(i int) int64 { return load[i] }, 20, 1.5); got != order[3] {
		t.Errorf("PickBounded = %d, want %d (order %v)", got, order[3], order)
	}
}

// TestPickBoundedWeights checks that the bound scales with weight and that
// it uses the usable weight, not the total.
func TestPickBoundedWeights(t *testing.T) {
	bs := []Backend{{"a", 1}, {"b", 3}, {"c", 4}}
	tab := mustNew(t, bs, Options{})
	usable := func(i int) bool { return i != 2 } // c down: usable weight 4
	ip := netip.MustParseAddr("198.51.100.1")
	for _, tc := range []struct {
		load [3]int64
		want string
	}{
		// total 8, factor 1: cap a = ceil(9*1/4) = 3, cap b = ceil(9*3/4) = 7.
		{[3]int64{2, 6, 0}, ""}, // both have room: the client's own choice
		{[3]int64{3, 5, 0}, "b"},
		{[3]int64{1, 7, 0}, "a"},
	} {
		load := tc.load
		got := tab.PickBounded(ip, usable, func(i int) int64 { return load[i] }, 8, 1)
		want := tab.Pick(ip, usable)
		if tc.want != "" {
			want = map[string]int{"a": 0, "b": 1}[tc.want]
		}
		if got != want {
			t.Errorf("load %v: got %d, want %d", tc.load, got, want)
		}
	}
}

// TestPickBoundedDisabled checks the fallbacks to Pick: factor below 1,
// nil active, and counts that leave no backend under the bound.
func TestPickBoundedDisabled(t *testing.T) {
	tab := mustNew(t, names(8), Options{})
	ip := netip.MustParseAddr("203.0.113.9")
	full := func(int) int64 { return 1 << 40 }
	want := tab.Pick(ip, nil)
	for _, factor := range []float64{0, 0.5, math.NaN()} {
		if got := tab.PickBounded(ip, nil, full, 8, factor); got != want {
			t.Errorf("factor %v: %d, want Pick's %d", factor, got, want)
		}
	}
	if got := tab.PickBounded(ip, nil, nil, 8, 1.5); got != want {
		t.Errorf("nil active: %d, want %d", got, want)
	}
	if got := tab.PickBounded(ip, nil, full, 8, 1.5); got != want {
		t.Errorf("inconsistent total: %d, want %d", got, want)
	}
}
