package balancer

import (
	"cmp"
	"slices"
)

// tableSizes are the Maglev table sizes: the smallest prime at or above
// 2^17, 2^18, ... 2^22. The size changes only when the backends' total
// weight, in units of the smallest weight, crosses a power of two from 2048
// up (see tableSize), because a new size reshuffles every key.
var tableSizes = [...]int{131101, 262147, 524309, 1048583, 2097169, 4194319}

// slotsPerUnit is how many table slots tableSize grants per unit of the
// smallest weight: 64 keeps each backend's share within 2% (one slot in at
// least 57 filled ones).
const slotsPerUnit = 64

// tableSize returns the table size for backends: the smallest listed size
// with at least slotsPerUnit slots per smallest-weight unit, or the largest.
func tableSize(backends []Backend) int {
	total, least := 0, MaxWeight
	for _, b := range backends {
		total += b.weight()
		least = min(least, b.weight())
	}
	units := (total + least - 1) / least
	for _, m := range tableSizes {
		if m >= slotsPerUnit*units {
			return m
		}
	}
	return tableSizes[len(tableSizes)-1]
}

// fillTarget returns how many of m slots the fill claims for n backends.
// Leaving slots empty (looked up by probing on) cuts the cascade of moves
// that a full Maglev fill causes when a backend leaves, which dominates with
// many backends; but the set of filled slots itself then shifts a little,
// which dominates with few. Measured in docs/balancer.md: leave
// min(10%, n/4096) of the table empty.
func fillTarget(m, n int) int {
	return m - min(m/10, int(uint64(m)*uint64(n)/4096))
}

// walker is one backend's Maglev permutation of the slots: it visits
// offset, offset+skip, offset+2*skip, ... (mod m); m is prime, so every
// slot once.
type walker struct {
	next, skip uint32
	weight     uint32
	index      uint16 // backend index in the caller's slice
}

// claim writes w's backend into the next empty slot of its permutation.
func (w *walker) claim(slots []uint16) {
	m, skip := uint32(len(slots)), w.skip
	p := w.next
	for slots[p] != empty {
		p = step(p, skip, m)
	}
	slots[p] = w.index
	w.next = step(p, skip, m)
}

// step returns (p+skip) mod m for p, skip < m < 2^31, without a branch: the
// wrap-around is taken about half the time, and mispredicting it cost a
// third of New's time.
func step(p, skip, m uint32) uint32 {
	p += skip - m
	return p + m&uint32(int32(p)>>31)
}

// build returns the Maglev table for backends: in name order, backends take
// turns claiming their next empty slot, as often as their weight allows,
// until fill(size, len(backends)) slots are claimed.
func build(backends []Backend, fill func(m, n int) int) []uint16 {
	return buildM(backends, tableSize(backends), fill)
}

// buildM is build with table size m, a prime.
func buildM(backends []Backend, m int, fill func(m, n int) int) []uint16 {
	slots := make([]uint16, m)
	for i := range slots {
		slots[i] = empty
	}
	ws := make([]walker, len(backends))
	for i, b := range backends {
		ws[i] = walker{
			next:   uint32(hashString(b.Name, seedOffset) % uint64(m)),
			skip:   uint32(hashString(b.Name, seedSkip)%uint64(m-1)) + 1,
			weight: uint32(b.weight()),
			index:  uint16(i),
		}
	}
	slices.SortFunc(ws, func(a, b walker) int {
		return cmp.Compare(backends[a.index].Name, backends[b.index].Name)
	})
	fillRounds(slots, ws, fill(m, len(backends)))
	return slots
}

// fillRounds lets ws claim slots in rounds until target slots are claimed.
// Over r rounds a backend of weight w claims floor(r*w/least) slots, where
// least is the smallest weight: with equal weights, one slot each per round
// (plain Maglev). Integer arithmetic keeps it exact on every platform.
func fillRounds(slots []uint16, ws []walker, target int) {
	least := uint32(MaxWeight)
	for _, w := range ws {
		least = min(least, w.weight)
	}
	filled := 0
	for r := uint64(1); ; r++ {
		for i := range ws {
			c := uint64(1)
			if w := uint64(ws[i].weight); w != uint64(least) {
				c = r*w/uint64(least) - (r-1)*w/uint64(least)
			}
			for ; c > 0; c-- {
				if filled == target {
					return
				}
				ws[i].claim(slots)
				filled++
			}
		}
	}
}
