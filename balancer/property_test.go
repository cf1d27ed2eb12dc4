package balancer

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

// The sizes of the property tests.
var testSizes = []int{4, 16, 64, 1000}

// literalBalance is the max/mean the issue asks for at n backends.
func literalBalance(n int) float64 {
	if n >= 1000 {
		return 1.02
	}
	return 1.01
}

// TestBalanceTable checks the balance the table itself gives: each
// backend's share of the slots, which is its share of keys as their number
// grows.
func TestBalanceTable(t *testing.T) {
	for _, n := range append(testSizes, 4096) {
		tab := mustNew(t, names(n), Options{})
		shares := slotShares(tab)
		worst := 0.0
		for _, s := range shares {
			worst = max(worst, s*float64(n))
		}
		if worst > literalBalance(n) {
			t.Errorf("N=%d: table max/mean %.4f > %.2f", n, worst, literalBalance(n))
		}
	}
}

// TestBalanceKeys hashes 1M random IPv4 and 1M random IPv6 keys. Counts of
// random keys carry sampling noise that no hash can remove, so the bound is
// the figure or the noise floor of 1M keys, whichever is larger, and
// the counts must also pass a chi-square test against the table's shares.
func TestBalanceKeys(t *testing.T) {
	for _, family := range []struct {
		name string
		ips  []netip.Addr
	}{{"v4", randomV4(numKeys, 1)}, {"v6", randomV6(numKeys, 1)}} {
		for _, n := range testSizes {
			t.Run(fmt.Sprintf("%s/N=%d", family.name, n), func(t *testing.T) {
				tab := mustNew(t, names(n), Options{})
				c := counts(pickAll(tab, family.ips, nil), n)
				got := maxOverMean(c, equalShares(n))
				bound := samplingBound(literalBalance(n), n, numKeys)
				t.Logf("max/mean %.4f (bound %.4f)", got, bound)
				if got > bound {
					t.Errorf("max/mean %.4f > %.4f", got, bound)
				}
				checkChiSquare(t, "keys", c, slotShares(tab))
			})
		}
	}
}

// TestBalanceStructured feeds keys that differ in few bits: consecutive
// IPv4 addresses, IPv6 addresses that differ only in the interface ID or
// only in the /64, and backend names that differ only in the port.
func TestBalanceStructured(t *testing.T) {
	seqV4 := make([]netip.Addr, numKeys)
	ifaceV6 := make([]netip.Addr, numKeys)
	netV6 := make([]netip.Addr, numKeys)
	for i := range numKeys {
		seqV4[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		ifaceV6[i] = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i), 14: byte(i >> 8), 13: byte(i >> 16)})
		netV6[i] = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 7: byte(i), 6: byte(i >> 8), 5: byte(i >> 16), 15: 1})
	}
	ports := make([]Backend, 16)
	for i := range ports {
		ports[i] = Backend{Name: fmt.Sprintf("127.0.0.1:%d", 8000+i)}
	}
	for _, tc := range []struct {
		name     string
		ips      []netip.Addr
		backends []Backend
	}{
		{"sequential-v4", seqV4, names(64)},
		{"v6-interface-id", ifaceV6, names(64)},
		{"v6-subnets", netV6, names(64)},
		{"port-only-names", seqV4, ports},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := mustNew(t, tc.backends, Options{})
			n := tab.Len()
			c := counts(pickAll(tab, tc.ips, nil), n)
			got := maxOverMean(c, equalShares(n))
			t.Logf("max/mean %.4f", got)
			if bound := samplingBound(literalBalance(n), n, numKeys); got > bound {
				t.Errorf("max/mean %.4f > %.4f", got, bound)
			}
			checkChiSquare(t, "keys", c, slotShares(tab))
		})
	}
}

// TestWeights checks that shares follow weights, in the table and for 1M
// keys, within 2% (relative) of weight/total.
func TestWeights(t *testing.T) {
	bs := []Backend{{"a", 0}, {"b", 1}, {"c", 2}, {"d", 3}, {"e", 5}, {"f", 8}}
	tab := mustNew(t, bs, Options{})
	want := make([]float64, len(bs))
	for i, b := range bs {
		want[i] = float64(b.weight()) / 20
	}
	c := counts(pickAll(tab, randomV4(numKeys, 2), nil), len(bs))
	shares := slotShares(tab)
	for i := range bs {
		key := float64(c[i]) / numKeys
		t.Logf("%s weight %d: want %.4f, table %.4f, keys %.4f", bs[i].Name, bs[i].weight(), want[i], shares[i], key)
		if rel(shares[i], want[i]) > 0.01 || rel(key, want[i]) > 0.02 {
			t.Errorf("%s: share table %.4f keys %.4f, want %.4f", bs[i].Name, shares[i], key, want[i])
		}
	}
}

// TestWeightsMany checks table shares for 1000 backends of weights 1..10.
func TestWeightsMany(t *testing.T) {
	bs := names(1000)
	total := 0
	for i := range bs {
		bs[i].Weight = 1 + i%10
		total += bs[i].Weight
	}
	shares := slotShares(mustNew(t, bs, Options{}))
	for i, b := range bs {
		if want := float64(b.Weight) / float64(total); rel(shares[i], want) > 0.02 {
			t.Errorf("%s weight %d: table share %.6f, want %.6f", b.Name, b.Weight, shares[i], want)
		}
	}
}

// rel returns |got-want|/want.
func rel(got, want float64) float64 {
	if got > want {
		return (got - want) / want
	}
	return (want - got) / want
}

// TestDisruption removes one backend both ways, by the predicate and by
// rebuilding without it, and then adds it back.
func TestDisruption(t *testing.T) {
	ips := randomV4(numKeys, 3)
	for _, n := range testSizes {
		bs := names(n)
		tab := mustNew(t, bs, Options{})
		before := pickAll(tab, ips, nil)
		for _, r := range []int{0, n / 2, n - 1} {
			t.Run(fmt.Sprintf("N=%d/remove=%d", n, r), func(t *testing.T) {
				checkPredicateRemoval(t, tab, ips, before, r)
				checkRebuildRemoval(t, tab, ips, before, r)
			})
		}
	}
}

// checkPredicateRemoval marks r unusable: exactly r's keys move, evenly over
// the others, and they all come back when r is usable again.
func checkPredicateRemoval(t *testing.T, tab *Table, ips []netip.Addr, before []int, r int) {
	t.Helper()
	n := tab.Len()
	after := pickAll(tab, ips, func(i int) bool { return i != r })
	moved := make([]int, n)
	for k := range ips {
		switch {
		case before[k] == r:
			moved[after[k]]++
		case after[k] != before[k]:
			t.Fatalf("predicate: key %v moved from %d to %d though only %d is down", ips[k], before[k], after[k], r)
		}
	}
	if moved[r] != 0 {
		t.Fatalf("predicate: %d keys stayed on unusable backend %d", moved[r], r)
	}
	want := slotShares(tab)
	want[r] = 0
	checkChiSquare(t, "keys of the down backend", moved, want)
	loads := counts(after, n)
	if got, bound := maxOverMean(loads, want), samplingBound(literalBalance(n), n, len(ips)); got > bound {
		t.Errorf("predicate: survivors max/mean %.4f > %.4f", got, bound)
	}
	back := pickAll(tab, ips, func(int) bool { return true })
	for k := range ips {
		if back[k] != before[k] {
			t.Fatalf("predicate: key %v did not come back: %d, want %d", ips[k], back[k], before[k])
		}
	}
}

// checkRebuildRemoval rebuilds without r: all of r's keys move and at most
// 0.5% of the others; rebuilding with r restores the mapping exactly.
func checkRebuildRemoval(t *testing.T, tab *Table, ips []netip.Addr, before []int, r int) {
	t.Helper()
	bs := tab.backends
	rest := append(append([]Backend(nil), bs[:r]...), bs[r+1:]...)
	after := pickAll(mustNew(t, rest, Options{}), ips, nil)
	others, moved := 0, 0
	for k := range ips {
		if before[k] == r {
			continue
		}
		others++
		if rest[after[k]].Name != bs[before[k]].Name {
			moved++
		}
	}
	frac := float64(moved) / float64(others)
	t.Logf("rebuild: %.3f%% of the other backends' keys moved", 100*frac)
	if frac > 0.005 {
		t.Errorf("rebuild: %.3f%% of the other backends' keys moved, want <= 0.5%%", 100*frac)
	}
	// The mapping is a function of the slots, so equal slots restore every
	// key exactly, not only the sampled ones.
	if again := mustNew(t, bs, Options{}); !slices.Equal(again.slots, tab.slots) {
		t.Fatal("rebuild: adding the backend back did not restore the table")
	}
}
