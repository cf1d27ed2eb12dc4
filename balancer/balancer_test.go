package balancer

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends []Backend
		opts     Options
		want     error
	}{
		{"nil", nil, Options{}, ErrNoBackends},
		{"empty name", []Backend{{Name: "a"}, {Name: ""}}, Options{}, ErrEmptyName},
		{"duplicate", []Backend{{Name: "a"}, {Name: "b"}, {Name: "a"}}, Options{}, ErrDuplicateName},
		{"negative weight", []Backend{{Name: "a", Weight: -1}}, Options{}, ErrWeight},
		{"huge weight", []Backend{{Name: "a", Weight: MaxWeight + 1}}, Options{}, ErrWeight},
		{"too many", names(MaxBackends + 1), Options{}, ErrTooMany},
		{"bad v4 prefix", []Backend{{Name: "a"}}, Options{Key: KeyMode{V4Prefix: 33}}, ErrKeyMode},
		{"bad v6 prefix", []Backend{{Name: "a"}}, Options{Key: KeyMode{V6Prefix: -1}}, ErrKeyMode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := New(tc.backends, tc.opts)
			if !errors.Is(err, tc.want) || tab != nil {
				t.Fatalf("New: %v, %v; want error %v", tab, err, tc.want)
			}
			if msg := err.Error(); len(msg) < 10 || msg[:10] != "balancer: " {
				t.Errorf("error %q lacks the package prefix", msg)
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	bs := []Backend{{Name: "a", Weight: 0}, {Name: "b", Weight: 7}}
	tab := mustNew(t, bs, Options{})
	bs[0].Name = "changed" // New copied the slice
	if tab.Len() != 2 || tab.Backend(0) != (Backend{Name: "a"}) || tab.Backend(1) != (Backend{Name: "b", Weight: 7}) {
		t.Errorf("Len %d, Backend(0) %+v, Backend(1) %+v", tab.Len(), tab.Backend(0), tab.Backend(1))
	}
}

// TestListOrderIrrelevant builds the same backends in shuffled orders: the
// table, and so every key's order by name, must be identical.
func TestListOrderIrrelevant(t *testing.T) {
	bs := names(100)
	for i := range bs {
		bs[i].Weight = 1 + i%3
	}
	ref := mustNew(t, bs, Options{})
	ips := append(randomV4(1000, 5), randomV6(1000, 5)...)
	r := rand.New(rand.NewPCG(1, 1))
	for range 3 {
		shuffled := slices.Clone(bs)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		tab := mustNew(t, shuffled, Options{})
		if tableDigest(tab) != tableDigest(ref) {
			t.Fatal("table differs with the backend order")
		}
		for _, ip := range ips {
			a, b := ref.Order(ip, nil), tab.Order(ip, nil)
			for k := range a {
				if ref.Backend(a[k]).Name != tab.Backend(b[k]).Name {
					t.Fatalf("%v: order differs at %d: %s vs %s", ip, k, ref.Backend(a[k]).Name, tab.Backend(b[k]).Name)
				}
			}
		}
	}
}

func TestMappedIsIPv4(t *testing.T) {
	tab := mustNew(t, names(64), Options{})
	for _, ip := range randomV4(10000, 6) {
		mapped := netip.AddrFrom16(ip.As16())
		if !mapped.Is4In6() {
			t.Fatalf("%v is not mapped", mapped)
		}
		if a, b := tab.Pick(ip, nil), tab.Pick(mapped, nil); a != b {
			t.Fatalf("%v -> %d but %v -> %d", ip, a, mapped, b)
		}
	}
}

func TestZoneIgnored(t *testing.T) {
	tab := mustNew(t, names(64), Options{})
	a := netip.MustParseAddr("fe80::1")
	if tab.Pick(a, nil) != tab.Pick(a.WithZone("eth0"), nil) {
		t.Error("the zone changes the pick")
	}
}

// TestPrefixKeys checks that a prefix key maps a whole prefix alike and
// still spreads prefixes over the backends.
func TestPrefixKeys(t *testing.T) {
	mode, err := ParseKeyMode("/24,/64")
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	tab := mustNew(t, names(n), Options{Key: mode})
	whole := mustNew(t, names(n), Options{})
	seen := map[int]bool{}
	for _, ip := range append(randomV4(200, 7), randomV6(200, 7)...) {
		bits := 24
		if ip.Is6() {
			bits = 64
		}
		p := netip.PrefixFrom(ip, bits).Masked()
		want := tab.Pick(p.Addr(), nil)
		seen[want] = true
		for _, other := range []netip.Addr{ip, lastAddr(p)} {
			if got := tab.Pick(other, nil); got != want {
				t.Fatalf("%v in %v -> %d, want %d", other, p, got, want)
			}
		}
		if ip.Is4() && tab.Pick(netip.AddrFrom16(ip.As16()), nil) != want {
			t.Fatalf("mapped %v leaves its /24", ip)
		}
	}
	if len(seen) != n {
		t.Errorf("prefix keys reached %d of %d backends", len(seen), n)
	}
	// The IPv4 part does not affect IPv6 keys and vice versa.
	v4only := mustNew(t, names(n), Options{Key: KeyMode{V4Prefix: 24}})
	for _, ip := range randomV6(200, 8) {
		if v4only.Pick(ip, nil) != whole.Pick(ip, nil) {
			t.Fatalf("V4Prefix changed the IPv6 key %v", ip)
		}
	}
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().AsSlice()
	for i := p.Bits(); i < len(a)*8; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	ip, _ := netip.AddrFromSlice(a)
	return ip
}

// TestOrder checks that Order is a permutation, that Pick is its first
// usable entry, and that the fallback is reached when most backends are
// down.
func TestOrder(t *testing.T) {
	for _, n := range []int{1, 2, 5, 200} {
		tab := mustNew(t, names(n), Options{})
		r := rand.New(rand.NewPCG(uint64(n), 2))
		for k, ip := range randomV4(300, uint64(n)) {
			order := tab.Order(ip, []int{-7})
			if order[0] != -7 {
				t.Fatal("Order overwrote buf")
			}
			order = order[1:]
			if len(order) != n || !isPermutation(order) {
				t.Fatalf("N=%d %v: order %v is not a permutation", n, ip, order)
			}
			// Mostly down, or only one up: exercises the fallback order.
			up := make([]bool, n)
			for i := range up {
				up[i] = k%2 == 0 && r.IntN(8) == 0
			}
			if k%2 == 1 {
				up[r.IntN(n)] = true
			}
			want := -1
			for _, i := range order {
				if up[i] {
					want = i
					break
				}
			}
			if got := tab.Pick(ip, func(i int) bool { return up[i] }); got != want {
				t.Fatalf("N=%d %v: Pick %d, first usable in order %d", n, ip, got, want)
			}
			if got := tab.Pick(ip, nil); got != order[0] {
				t.Fatalf("N=%d %v: Pick(nil) %d, order[0] %d", n, ip, got, order[0])
			}
		}
	}
}

// isPermutation reports whether s holds 0..len(s)-1 once each.
func isPermutation(s []int) bool {
	seen := make([]bool, len(s))
	for _, i := range s {
		if i < 0 || i >= len(s) || seen[i] {
			return false
		}
		seen[i] = true
	}
	return true
}

func TestNoneUsable(t *testing.T) {
	tab := mustNew(t, names(10), Options{})
	ip := netip.MustParseAddr("192.0.2.1")
	if got := tab.Pick(ip, func(int) bool { return false }); got != -1 {
		t.Errorf("Pick with nothing usable = %d, want -1", got)
	}
	if got := tab.PickBounded(ip, func(int) bool { return false }, func(int) int64 { return 0 }, 0, 1.5); got != -1 {
		t.Errorf("PickBounded with nothing usable = %d, want -1", got)
	}
}

func TestPickAllocs(t *testing.T) {
	tab := mustNew(t, names(1000), Options{})
	v4, v6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	up := func(i int) bool { return i%2 == 0 }
	active := func(int) int64 { return 1 }
	allocs := testing.AllocsPerRun(100, func() {
		tab.Pick(v4, up)
		tab.Pick(v6, nil)
		tab.PickBounded(v6, up, active, 500, 1.25)
	})
	if allocs != 0 {
		t.Errorf("Pick allocates %v times", allocs)
	}
}
