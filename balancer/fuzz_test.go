package balancer

import (
	"fmt"
	"net/netip"
	"testing"
)

// FuzzPick feeds any 16 address bytes (as IPv6, or as IPv4 from the last
// four), any number of backends and any health mask: Pick must return an
// index in range or -1, Order a permutation, and Pick the first usable
// entry of Order.
func FuzzPick(f *testing.F) {
	f.Add([]byte("0123456789abcdef"), uint16(5), uint64(0xff), false)
	f.Add(make([]byte, 16), uint16(1), uint64(0), true)
	f.Add([]byte{15: 1}, uint16(300), uint64(1), false)
	tables := map[uint16]*Table{}
	f.Fuzz(func(t *testing.T, raw []byte, n uint16, mask uint64, v4 bool) {
		var a [16]byte
		copy(a[:], raw)
		ip := netip.AddrFrom16(a)
		if v4 {
			ip = netip.AddrFrom4([4]byte(a[12:]))
		}
		n = 1 + n%300
		tab := tables[n]
		if tab == nil {
			bs := make([]Backend, n)
			for i := range bs {
				bs[i] = Backend{Name: fmt.Sprint("b", i), Weight: 1 + i%3}
			}
			tab = mustNew(t, bs, Options{})
			tables[n] = tab
		}
		usable := func(i int) bool { return mask>>(i%64)&1 == 1 }
		order := tab.Order(ip, nil)
		if len(order) != int(n) || !isPermutation(order) {
			t.Fatalf("%v N=%d: order %v is not a permutation", ip, n, order)
		}
		want := -1
		for _, i := range order {
			if usable(i) {
				want = i
				break
			}
		}
		if got := tab.Pick(ip, usable); got != want {
			t.Fatalf("%v N=%d mask %#x: Pick %d, first usable of Order %d", ip, n, mask, got, want)
		}
		if got := tab.Pick(ip, nil); got != order[0] {
			t.Fatalf("%v N=%d: Pick(nil) %d, order[0] %d", ip, n, got, order[0])
		}
	})
}
