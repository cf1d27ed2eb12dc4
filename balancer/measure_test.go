package balancer

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestReport prints the figures of docs/balancer.md. It is skipped unless
// asked for:
//
//	go test -run TestReport -count=1 -v ./balancer/ -args -balancer.report
var report = flag.Bool("balancer.report", false, "print the measurements of docs/balancer.md")

func TestReport(t *testing.T) {
	if !*report {
		t.Skip("run with -args -balancer.report")
	}
	sizes := []int{4, 16, 32, 64, 128, 256, 512, 1000, 2000}
	v4, v6 := randomV4(numKeys, 1), randomV6(numKeys, 1)
	var b strings.Builder
	reportBalance(t, &b, sizes, v4, v6)
	reportRemoval(t, &b, sizes, v4)
	reportWeights(t, &b, v4)
	t.Log(b.String())
}

// reportBalance prints max/mean per N: of the table's shares, of the keys,
// of ideal random bins, and of the survivors with one backend down.
func reportBalance(t *testing.T, b *strings.Builder, sizes []int, v4, v6 []netip.Addr) {
	t.Helper()
	fmt.Fprintf(b, "\nbalance, max/mean over %d keys (table: share of filled slots; ideal: uniform random bins;\n1 down: survivors' v4 load with backend N/2 unusable)\n", numKeys)
	fmt.Fprintf(b, "%6s %8s %8s %8s %8s %8s %10s %8s\n", "N", "M", "filled", "table", "v4", "v6", "ideal", "1 down")
	for _, n := range sizes {
		tab := mustNew(t, names(n), Options{})
		shares := slotShares(tab)
		tableMax, filled := 0.0, 0
		for _, s := range shares {
			tableMax = max(tableMax, s*float64(n))
		}
		for _, s := range tab.slots {
			if s != empty {
				filled++
			}
		}
		down := func(i int) bool { return i != n/2 }
		shares[n/2] = 0
		fmt.Fprintf(b, "%6d %8d %7.1f%% %8.4f %8.4f %8.4f %10.4f %8.4f\n", n, len(tab.slots),
			100*float64(filled)/float64(len(tab.slots)), tableMax,
			maxOverMean(counts(pickAll(tab, v4, nil), n), equalShares(n)),
			maxOverMean(counts(pickAll(tab, v6, nil), n), equalShares(n)),
			idealRandom(n, numKeys),
			maxOverMean(counts(pickAll(tab, v4, down), n), shares))
	}
}

// reportRemoval prints, per fill rule and N, the largest share of other
// backends' keys that move when one backend is removed.
func reportRemoval(t *testing.T, b *strings.Builder, sizes []int, ips []netip.Addr) {
	t.Helper()
	emptyN2 := func(shift uint) func(m, n int) int {
		return func(m, n int) int { return m - min(m/10, int(uint64(m)*uint64(n)*uint64(n)>>shift)) }
	}
	fills := []struct {
		name string
		m    int // 0: the default size
		fill func(m, n int) int
	}{
		{"chosen: empty min(10%, N/4096)", 0, fillTarget},
		{"full Maglev", 0, func(m, n int) int { return m }},
		{"empty min(10%, N^2/2^18)", 0, emptyN2(18)},
		{"empty min(10%, N^2/2^17)", 0, emptyN2(17)},
		{"empty 10% always", 0, func(m, n int) int { return m - m/10 }},
		{"full Maglev, M=262147", 262147, func(m, n int) int { return m }},
		{"full Maglev, M=524309", 524309, func(m, n int) int { return m }},
	}
	fmt.Fprintf(b, "\nrebuild without one backend: max %% of other keys moved (3 removals, %d keys);\nbuild: time of one build at N=1000\n", len(ips))
	fmt.Fprintf(b, "%-32s", "fill")
	for _, n := range sizes {
		fmt.Fprintf(b, " %7s", fmt.Sprintf("N=%d", n))
	}
	b.WriteString("\n")
	for _, f := range fills {
		fmt.Fprintf(b, "%-32s", f.name)
		for _, n := range sizes {
			fmt.Fprintf(b, " %6.3f%%", 100*worstDisruption(t, n, ips, f.m, f.fill))
		}
		start := time.Now()
		buildSized(names(1000), f.m, f.fill)
		fmt.Fprintf(b, "  build %v\n", time.Since(start).Round(100*time.Microsecond))
	}
}

// reportWeights prints the largest relative error of a backend's share
// against weight/total, in the table and for the keys.
func reportWeights(t *testing.T, b *strings.Builder, ips []netip.Addr) {
	t.Helper()
	many := names(1000)
	for i := range many {
		many[i].Weight = 1 + i%10
	}
	fmt.Fprintf(b, "\nweights: largest |share - weight/total| / (weight/total)\n")
	for _, tc := range []struct {
		name string
		bs   []Backend
	}{
		{"N=6 weights 0(=1),1,2,3,5,8", []Backend{{"a", 0}, {"b", 1}, {"c", 2}, {"d", 3}, {"e", 5}, {"f", 8}}},
		{"N=1000 weights 1..10", many},
	} {
		tab := mustNew(t, tc.bs, Options{})
		total := 0.0
		for _, bk := range tc.bs {
			total += float64(bk.weight())
		}
		c := counts(pickAll(tab, ips, nil), len(tc.bs))
		tableErr, keyErr := 0.0, 0.0
		for i, share := range slotShares(tab) {
			want := float64(tc.bs[i].weight()) / total
			tableErr = max(tableErr, rel(share, want))
			keyErr = max(keyErr, rel(float64(c[i])/float64(len(ips)), want))
		}
		fmt.Fprintf(b, "%-30s M=%d table %.2f%%, %d keys %.2f%%\n", tc.name, len(tab.slots), 100*tableErr, len(ips), 100*keyErr)
	}
}

// idealRandom returns max/mean of k keys thrown uniformly at random into n
// bins: the sampling noise no hash can beat.
func idealRandom(n, k int) float64 {
	r := rand.New(rand.NewPCG(7, 7))
	c := make([]int, n)
	for range k {
		c[r.IntN(n)]++
	}
	return maxOverMean(c, equalShares(n))
}

// worstDisruption returns the largest fraction of other backends' keys that
// move when one of n backends is removed and the table (size m, 0 for the
// default) rebuilt with fill.
func worstDisruption(t *testing.T, n int, ips []netip.Addr, m int, fill func(m, n int) int) float64 {
	t.Helper()
	bs := names(n)
	before := pickAll(buildSized(bs, m, fill), ips, nil)
	worst := 0.0
	for _, r := range []int{0, n / 2, n - 1} {
		rest := append(append([]Backend(nil), bs[:r]...), bs[r+1:]...)
		after := pickAll(buildSized(rest, m, fill), ips, nil)
		others, moved := 0, 0
		for k := range ips {
			if before[k] != r {
				others++
				if rest[after[k]].Name != bs[before[k]].Name {
					moved++
				}
			}
		}
		worst = max(worst, float64(moved)/float64(others))
	}
	return worst
}

// buildSized returns a table for bs of size m (0: the default size) filled
// to fill(m, n) slots.
func buildSized(bs []Backend, m int, fill func(m, n int) int) *Table {
	if m == 0 {
		m = tableSize(bs)
	}
	t := &Table{backends: bs, nameHash: make([]uint64, len(bs))}
	t.mask4, t.mask6hi, t.mask6lo = KeyMode{}.masks()
	for i, b := range bs {
		t.nameHash[i] = hashString(b.Name, seedName)
	}
	t.slots = buildM(bs, m, fill)
	t.size = uint64(m)
	return t
}
