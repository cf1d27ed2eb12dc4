package balancer

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// numKeys is the sample size of the property tests.
const numKeys = 1 << 20

// names returns n backend names that differ only in their last characters,
// the way real "host:port" names do.
func names(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Name: fmt.Sprintf("10.0.%d.%d:8080", i/256, i%256)}
	}
	return bs
}

// mustNew is New for tests.
func mustNew(tb testing.TB, bs []Backend, opts Options) *Table {
	tb.Helper()
	t, err := New(bs, opts)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return t
}

// randomV4 returns n random IPv4 addresses from a fixed-seed generator.
func randomV4(n int, seed uint64) []netip.Addr {
	r := rand.New(rand.NewPCG(seed, 4))
	ips := make([]netip.Addr, n)
	for i := range ips {
		v := r.Uint32()
		ips[i] = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return ips
}

// randomV6 returns n random IPv6 addresses from a fixed-seed generator.
func randomV6(n int, seed uint64) []netip.Addr {
	r := rand.New(rand.NewPCG(seed, 6))
	ips := make([]netip.Addr, n)
	for i := range ips {
		var a [16]byte
		for j := 0; j < 16; j += 8 {
			v := r.Uint64()
			for k := range 8 {
				a[j+k] = byte(v >> (8 * k))
			}
		}
		ips[i] = netip.AddrFrom16(a)
	}
	return ips
}

// pickAll returns Pick(ip, usable) for every ip.
func pickAll(t *Table, ips []netip.Addr, usable func(int) bool) []int {
	out := make([]int, len(ips))
	for i, ip := range ips {
		out[i] = t.Pick(ip, usable)
	}
	return out
}

// counts returns how many picks went to each of n backends.
func counts(picks []int, n int) []int {
	c := make([]int, n)
	for _, p := range picks {
		c[p]++
	}
	return c
}

// slotShares returns each backend's share of the filled table slots: the
// share of keys it gets as the number of keys grows.
func slotShares(t *Table) []float64 {
	c := make([]float64, t.Len())
	filled := 0.0
	for _, s := range t.slots {
		if s != empty {
			c[s]++
			filled++
		}
	}
	for i := range c {
		c[i] /= filled
	}
	return c
}

// maxOverMean returns max(c)/mean(c) over the backends with want[i] > 0,
// each count scaled by its expected share (so weighted backends compare
// fairly).
func maxOverMean(c []int, want []float64) float64 {
	want = normalize(want)
	total := 0
	for _, v := range c {
		total += v
	}
	worst := 0.0
	for i, v := range c {
		if want[i] > 0 {
			worst = max(worst, float64(v)/(want[i]*float64(total)))
		}
	}
	return worst
}

// normalize returns w scaled to sum to 1.
func normalize(w []float64) []float64 {
	sum := 0.0
	for _, v := range w {
		sum += v
	}
	out := make([]float64, len(w))
	for i, v := range w {
		out[i] = v / sum
	}
	return out
}

// equalShares returns n shares of 1/n.
func equalShares(n int) []float64 {
	w := make([]float64, n)
	for i := range w {
		w[i] = 1 / float64(n)
	}
	return w
}

// samplingBound is the max/mean bound for counts of k keys over n equal
// bins: the literal bound, or, where k keys cannot resolve it, the expected
// maximum of n binomial deviations (sqrt(2 ln n) standard deviations) plus
// two standard deviations of margin. A perfect random assignment needs
// about 3.7M keys for 1.01 at n = 64 and 26M for 1.02 at n = 1000.
func samplingBound(literal float64, n, k int) float64 {
	sd := math.Sqrt(float64(n) / float64(k))
	return max(literal, 1+(math.Sqrt(2*math.Log(float64(n)))+2)*sd)
}

// checkChiSquare fails if the counts are not plausibly a sample of the
// shares: Pearson's statistic must stay below its mean plus six standard
// deviations (a p-value around 1e-6 with these degrees of freedom).
func checkChiSquare(t *testing.T, what string, c []int, want []float64) {
	t.Helper()
	want = normalize(want)
	total, dof := 0, -1
	for _, v := range c {
		total += v
	}
	chi := 0.0
	for i, v := range c {
		if want[i] == 0 {
			continue
		}
		e := want[i] * float64(total)
		chi += (float64(v) - e) * (float64(v) - e) / e
		dof++
	}
	if limit := float64(dof) + 6*math.Sqrt(2*float64(dof)); chi > limit {
		t.Errorf("%s: chi-square %.1f over %d degrees of freedom, limit %.1f: not uniform", what, chi, dof, limit)
	}
}
