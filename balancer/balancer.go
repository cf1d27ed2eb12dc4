package balancer

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Errors returned by New, wrapped with the offending backend where there is
// one; check them with errors.Is.
var (
	// ErrNoBackends: the backend list is empty.
	ErrNoBackends = errors.New("balancer: no backends")
	// ErrTooMany: more than MaxBackends backends.
	ErrTooMany = errors.New("balancer: too many backends")
	// ErrEmptyName: a backend has no name.
	ErrEmptyName = errors.New("balancer: empty backend name")
	// ErrDuplicateName: two backends share a name.
	ErrDuplicateName = errors.New("balancer: duplicate backend name")
	// ErrWeight: a weight is negative or above MaxWeight.
	ErrWeight = errors.New("balancer: weight out of range")
)

const (
	// MaxBackends is the largest number of backends a Table holds.
	MaxBackends = 1<<16 - 1
	// MaxWeight is the largest Backend.Weight.
	MaxWeight = 1<<16 - 1
)

// Backend is one target of the table.
type Backend struct {
	// Name identifies the backend; it alone (with Weight) decides which
	// clients the backend gets, so keep it stable across restarts and
	// configuration reloads. Names must be unique and not empty.
	Name string
	// Weight is the backend's relative share of clients, 1..MaxWeight. Zero
	// means 1.
	Weight int
}

// weight returns b's weight with the zero default resolved.
func (b Backend) weight() int {
	return max(b.Weight, 1)
}

// Options tunes a Table. The zero value is the default.
type Options struct {
	// Key selects which part of the client address is hashed. The zero
	// value hashes the whole address.
	Key KeyMode
}

// Table maps client addresses to backends. It is immutable after New and
// safe for concurrent use; to change the backend set, build a new Table and
// swap it in (for example with atomic.Pointer). Health changes need no new
// Table: pass a predicate to Pick.
type Table struct {
	backends  []Backend // the caller's slice, copied
	slots     []uint16  // Maglev table: backend index, or empty
	size      uint64    // len(slots), a prime
	nameHash  []uint64  // per backend, for the fallback order
	weightSum int       // sum of all weights

	mask4            uint32 // key masks from Options.Key
	mask6hi, mask6lo uint64
}

const (
	empty = 1<<16 - 1 // a slot that no backend claimed
	// maxProbes bounds the table probes per lookup before the fallback
	// order (a rendezvous ranking over all backends) takes over.
	maxProbes = 64
)

// New builds a table for backends. Pick and Order refer to a backend by its
// index in this slice, but which client goes to which backend depends only
// on the names and weights, never on their order. New copies the slice.
//
// The table has 131101 slots (2 bytes each) until the total weight, counted
// in units of the smallest weight, passes 2048; beyond that it doubles at
// each power of two (up to 4194319 slots), and crossing such a boundary
// moves almost every client, as any resize of a Maglev table does. New
// takes about 2.5 ms for 1000 equal backends.
//
// Errors wrap ErrNoBackends, ErrTooMany, ErrEmptyName, ErrDuplicateName,
// ErrWeight or ErrKeyMode.
func New(backends []Backend, opts Options) (*Table, error) {
	return newTable(backends, opts, fillTarget)
}

// newTable is New with the Maglev fill target as a parameter, so that tests
// can measure the alternatives.
func newTable(backends []Backend, opts Options, fill func(m, n int) int) (*Table, error) {
	if err := validate(backends); err != nil {
		return nil, err
	}
	if err := opts.Key.validate(); err != nil {
		return nil, err
	}
	t := &Table{backends: slices.Clone(backends)}
	t.mask4, t.mask6hi, t.mask6lo = opts.Key.masks()
	t.nameHash = make([]uint64, len(backends))
	for i, b := range backends {
		t.nameHash[i] = hashString(b.Name, seedName)
		t.weightSum += b.weight()
	}
	t.slots = build(t.backends, fill)
	t.size = uint64(len(t.slots))
	return t, nil
}

// validate checks the backend list for New.
func validate(backends []Backend) error {
	switch {
	case len(backends) == 0:
		return ErrNoBackends
	case len(backends) > MaxBackends:
		return fmt.Errorf("%w: %d, at most %d", ErrTooMany, len(backends), MaxBackends)
	}
	seen := make(map[string]bool, len(backends))
	for i, b := range backends {
		switch {
		case b.Name == "":
			return fmt.Errorf("%w: backend %d", ErrEmptyName, i)
		case seen[b.Name]:
			return fmt.Errorf("%w: %q", ErrDuplicateName, b.Name)
		case b.Weight < 0 || b.Weight > MaxWeight:
			return fmt.Errorf("%w: backend %q weight %d, want 0..%d", ErrWeight, b.Name, b.Weight, MaxWeight)
		}
		seen[b.Name] = true
	}
	return nil
}

// Len returns the number of backends.
func (t *Table) Len() int { return len(t.backends) }

// Backend returns backend i as given to New. It panics if i is out of range.
func (t *Table) Backend(i int) Backend { return t.backends[i] }

// Pick returns the index of the first backend in ip's preference order for
// which usable(i) is true, or -1 if there is none. A nil usable accepts every
// backend. Pick calls usable from the calling goroutine only, and expects
// the same answer for the same i during one call.
//
// Pick does not allocate. When the first choice is usable it costs one hash
// and one table read; each unusable choice costs about one more.
func (t *Table) Pick(ip netip.Addr, usable func(i int) bool) int {
	return t.pick(t.keyHash(ip), usable)
}

// pick is Pick on a key hash.
func (t *Table) pick(h uint64, usable func(i int) bool) int {
	for k := range maxProbes {
		s := t.slots[reduce(probeHash(h, k), t.size)]
		if s != empty && (usable == nil || usable(int(s))) {
			return int(s)
		}
	}
	return t.fallbackPick(h, usable)
}

// Order appends ip's full preference order to buf and returns the extended
// slice: every backend index exactly once, most preferred first. Pick(ip, f)
// is the first i in Order(ip, nil) with f(i) true. Order allocates; it is
// meant for diagnostics and tests, not for every connection.
func (t *Table) Order(ip netip.Addr, buf []int) []int {
	h := t.keyHash(ip)
	n := len(t.backends)
	seen := make([]bool, n)
	start := len(buf)
	for k := 0; k < maxProbes && len(buf)-start < n; k++ {
		s := t.slots[reduce(probeHash(h, k), t.size)]
		if s != empty && !seen[s] {
			seen[s] = true
			buf = append(buf, int(s))
		}
	}
	fh := mix(h ^ seedFallback)
	rest := make([]ranked, 0, n-(len(buf)-start))
	for i := range n {
		if !seen[i] {
			rest = append(rest, ranked{t.fallbackScore(fh, i), i})
		}
	}
	slices.SortFunc(rest, func(a, b ranked) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return cmp.Compare(t.backends[a.index].Name, t.backends[b.index].Name)
	})
	for _, r := range rest {
		buf = append(buf, r.index)
	}
	return buf
}

// ranked is a backend and its fallback score for one key.
type ranked struct {
	score uint64
	index int
}

// The fallback order ranks the backends that maxProbes table probes did not
// reach by rendezvous (highest random weight) hashing on the key and name.
// It is only used when most backends are unusable.

// fallbackPick returns the usable backend that ranks first in the fallback
// order, or -1.
func (t *Table) fallbackPick(h uint64, usable func(i int) bool) int {
	fh := mix(h ^ seedFallback)
	best := -1
	for i := range t.backends {
		if (usable == nil || usable(i)) && (best < 0 || t.fallbackCmp(fh, i, best) < 0) {
			best = i
		}
	}
	return best
}

// fallbackCmp orders backends a and b for the key with fallback hash fh:
// higher score first, then (for a 64-bit hash tie) by name.
func (t *Table) fallbackCmp(fh uint64, a, b int) int {
	if c := cmp.Compare(t.fallbackScore(fh, b), t.fallbackScore(fh, a)); c != 0 {
		return c
	}
	return cmp.Compare(t.backends[a].Name, t.backends[b].Name)
}

// fallbackScore is backend i's rendezvous score for fallback hash fh.
func (t *Table) fallbackScore(fh uint64, i int) uint64 {
	return mix(fh ^ t.nameHash[i])
}
