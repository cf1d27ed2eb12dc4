// Package balancer maps client IP addresses to backends by consistent
// hashing. It is pure logic: no I/O, no goroutines, no clock, no randomness.
//
// A Table is built once from named, weighted backends and is then read-only
// and safe for concurrent use. Each client key has a full, fixed preference
// order over all backends; Pick returns the first backend in that order that
// the caller's predicate accepts, so a backend that is down or draining is
// skipped without rebuilding anything, and when it is usable again exactly
// its clients come back. The mapping depends only on backend names, weights
// and the key mode: not on slice order, process, or CPU architecture.
//
//	tab, err := balancer.New([]balancer.Backend{{Name: "app-1"}, {Name: "app-2", Weight: 2}}, balancer.Options{})
//	if err != nil {
//		return err
//	}
//	i := tab.Pick(clientIP, func(i int) bool { return healthy[i].Load() })
//	if i < 0 {
//		return errNoBackend // every backend is down
//	}
//	dial(tab.Backend(i).Name)
//
// The algorithm is a Maglev lookup table (prime size, at least 131101
// slots) filled to slightly less than full, probed at independent hash
// positions; docs/balancer.md has the design and the measurements behind it.
package balancer
