package balancer

import (
	"fmt"
	"net/netip"

	"testing"
)

// Run: go test -run '^$' -bench . -benchmem ./balancer/

// BenchmarkPick is the hot path: the first choice is usable.
func BenchmarkPick(b *testing.B) {
	for _, n := range testSizes {
		tab := mustNew(b, names(n), Options{})
		for _, fam := range []struct {
			name string
			ips  []netip.Addr
		}{{"v4", randomV4(1024, 9)}, {"v6", randomV6(1024, 9)}} {
			b.Run(fmt.Sprintf("N=%d/%s", n, fam.name), func(b *testing.B) {
				up := func(int) bool { return true }
				i := 0
				for b.Loop() {
					tab.Pick(fam.ips[i&1023], up)
					i++
				}
			})
		}
	}
}

// BenchmarkPickFailover has a quarter of the backends down.
func BenchmarkPickFailover(b *testing.B) {
	tab := mustNew(b, names(1000), Options{})
	ips := randomV4(1024, 9)
	up := func(i int) bool { return i%4 != 0 }
	i := 0
	for b.Loop() {
		tab.Pick(ips[i&1023], up)
		i++
	}
}

// BenchmarkPickOneLeft has one backend of 1000 up: the worst case, which
// ends in the fallback order.
func BenchmarkPickOneLeft(b *testing.B) {
	tab := mustNew(b, names(1000), Options{})
	ips := randomV4(1024, 9)
	up := func(i int) bool { return i == 500 }
	i := 0
	for b.Loop() {
		tab.Pick(ips[i&1023], up)
		i++
	}
}

// BenchmarkPickBounded places connections under a 1.25 bound.
func BenchmarkPickBounded(b *testing.B) {
	const n = 1000
	tab := mustNew(b, names(n), Options{})
	ips := randomV4(1024, 9)
	load := make([]int64, n)
	for i := range load {
		load[i] = 100
	}
	active := func(i int) int64 { return load[i] }
	i := 0
	for b.Loop() {
		tab.PickBounded(ips[i&1023], nil, active, 100*n, 1.25)
		i++
	}
}

// BenchmarkNew rebuilds the table.
func BenchmarkNew(b *testing.B) {
	for _, n := range testSizes {
		bs := names(n)
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for b.Loop() {
				mustNew(b, bs, Options{})
			}
		})
	}
	weighted := names(1000)
	for i := range weighted {
		weighted[i].Weight = 1 + i%10
	}
	b.Run("N=1000/weights=1..10", func(b *testing.B) {
		for b.Loop() {
			mustNew(b, weighted, Options{})
		}
	})
}

// BenchmarkOrder lists a full preference order.
func BenchmarkOrder(b *testing.B) {
	tab := mustNew(b, names(1000), Options{})
	ips := randomV4(1024, 9)
	buf := make([]int, 0, 1000)
	i := 0
	for b.Loop() {
		buf = tab.Order(ips[i&1023], buf[:0])
		i++
	}
}

// BenchmarkRendezvous is the alternative that needs no table: weighted
// rendezvous hashing scores every backend per lookup (here without the
// logarithm that weights need, so it is a lower bound).
func BenchmarkRendezvous(b *testing.B) {
	for _, n := range testSizes {
		tab := mustNew(b, names(n), Options{})
		ips := randomV4(1024, 9)
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				tab.fallbackPick(tab.keyHash(ips[i&1023]), nil)
				i++
			}
		})
	}
}
