package balancer

import "net/netip"

// PickBounded is Pick with bounded load (consistent hashing with bounded
// loads, like HAProxy's hash-balance-factor): it returns the first usable
// backend in ip's preference order whose load stays within the bound, so a
// client is moved off its own backend only while that backend is overloaded.
//
// active(i) is backend i's current number of connections and total is their
// sum over the usable backends, not counting the connection being placed.
// Backend i accepts the new connection while
//
//	active(i) + 1 <= ceil(factor * (total+1) * weight(i) / usable weight)
//
// so with equal weights no backend exceeds ceil(factor * average). With a
// consistent total some backend always qualifies; if none does (the counts
// moved under the caller), PickBounded returns Pick(ip, usable). A factor
// below 1, including 0, disables the bound: the result is Pick(ip, usable).
// Typical factors are 1.25 to 2; smaller ones move more clients.
//
// PickBounded does not allocate. It calls active only for backends it
// considers, and adds up the usable weight (one usable call per backend)
// only when a backend is over the cheaper bound computed from all backends'
// weight.
func (t *Table) PickBounded(ip netip.Addr, usable func(i int) bool, active func(i int) int64, total int64, factor float64) int {
	if !(factor >= 1) || active == nil {
		return t.Pick(ip, usable)
	}
	h := t.keyHash(ip)
	b := bound{t: t, usable: usable, active: active, load: float64(max(total, 0)+1) * factor}
	if i := t.pick(h, b.accept); i >= 0 {
		return i
	}
	return t.pick(h, usable)
}

// bound is one PickBounded call's acceptance test.
type bound struct {
	t      *Table
	usable func(i int) bool
	active func(i int) int64
	load   float64 // factor * (total+1)
	weight float64 // total weight of usable backends, once computed
}

// accept reports whether backend i is usable and under its bound. An
// integer a satisfies a+1 <= ceil(x) exactly when a < x.
func (b *bound) accept(i int) bool {
	if b.usable != nil && !b.usable(i) {
		return false
	}
	w := float64(b.t.backends[i].weight())
	a := float64(b.active(i))
	if b.weight == 0 {
		// The usable weight is at most the total weight, so passing
		// this lower bound passes the real one.
		if a < b.load*w/b.t.totalWeight() {
			return true
		}
		b.weight = b.t.usableWeight(b.usable)
	}
	return a < b.load*w/b.weight
}

// totalWeight returns the sum of all backends' weights.
func (t *Table) totalWeight() float64 {
	return float64(t.weightSum)
}

// usableWeight returns the sum of the usable backends' weights.
func (t *Table) usableWeight(usable func(i int) bool) float64 {
	sum := 0
	for i, b := range t.backends {
		if usable == nil || usable(i) {
			sum += b.weight()
		}
	}
	return float64(max(sum, 1))
}
