package daemon

import (
	"runtime"
	"testing"
	"time"
)

// feeder returns what gives c one sample period at a CPU use of cores
// (and returns the Ps it then wants), *slow being the share of goroutines
// that waited long for a P in that period.
func feeder(c *procsControl, slow *float64) func(cores float64) int {
	now, cpu := c.lastAt, c.lastCPU
	return func(cores float64) int {
		now = now.Add(procsPeriod)
		cpu += time.Duration(cores * float64(procsPeriod))
		return c.step(cpu, now, *slow)
	}
}

// TestProcsControl drives the GOMAXPROCS controller with synthetic CPU
// samples: it adds a P when the ones it has are nearly full, never goes
// above its maximum, and drops one only after procsCalm calm samples.
func TestProcsControl(t *testing.T) {
	c := &procsControl{max: 4, p: 4, lastAt: time.Unix(0, 0)}
	slow := 0.0 // share of goroutines that waited long for a P
	feed := feeder(c, &slow)
	for i := 1; i < procsCalm; i++ {
		if p := feed(0.1); p != 4 {
			t.Fatalf("calm sample %d: %d Ps, want 4 until %d calm samples", i, p, procsCalm)
		}
	}
	if p := feed(0.1); p != 3 {
		t.Fatalf("after %d calm samples: %d Ps, want 3", procsCalm, p)
	}
	for range 3 * procsCalm {
		feed(0.1)
	}
	if c.p != 1 {
		t.Fatalf("idle: %d Ps, want 1", c.p)
	}
	if p := feed(0.95); p != 2 {
		t.Fatalf("one full P: %d Ps, want 2", p)
	}
	if p := feed(1.0); p != 2 {
		t.Fatalf("half of 2 Ps busy: %d Ps, want 2 (no growth)", p)
	}
	for range procsCalm {
		feed(0.7) // above 0.6 of one P: not calm enough to drop one
	}
	if c.p != 2 {
		t.Fatalf("0.7 cores on 2 Ps: %d Ps, want 2", c.p)
	}
	for range 10 {
		feed(8)
	}
	if c.p != 4 {
		t.Fatalf("overloaded: %d Ps, want the maximum 4", c.p)
	}
	// Sharing the cores with other work: little CPU, but goroutines wait
	// for a P. No P is dropped then, and one is added back.
	slow = 0.2
	for range 2 * procsCalm {
		feed(0.5)
	}
	if c.p != 4 {
		t.Fatalf("goroutines waiting: %d Ps, want 4 kept", c.p)
	}
	slow = 0
	for range 3 * procsCalm {
		feed(0.5)
	}
	if c.p != 1 {
		t.Fatalf("calm again: %d Ps, want 1", c.p)
	}
	slow = 0.2
	if p := feed(0.5); p != 2 {
		t.Fatalf("goroutines waiting at 1 P: %d Ps, want 2", p)
	}
}

// A lower CPU limit drops the Ps above it at once and caps growth; a
// limit back up lets the controller grow again.
func TestProcsControlLimit(t *testing.T) {
	c := &procsControl{max: 4, p: 4, lastAt: time.Unix(0, 0)}
	feed := feeder(c, new(float64))
	c.setMax(2)
	if c.p != 2 {
		t.Fatalf("limit 2 with 4 Ps in use: %d Ps, want 2", c.p)
	}
	for range 10 {
		if p := feed(8); p != 2 {
			t.Fatalf("overloaded under a limit of 2: %d Ps", p)
		}
	}
	c.setMax(4)
	if c.p != 2 {
		t.Fatalf("limit raised: %d Ps, want 2 until the load asks for more", c.p)
	}
	for range 10 {
		feed(8)
	}
	if c.p != 4 {
		t.Fatalf("overloaded under a limit of 4: %d Ps, want 4", c.p)
	}
	c.setMax(0)
	if c.p != 1 || c.max != 1 {
		t.Fatalf("limit 0: %d Ps, max %d; want 1 and 1", c.p, c.max)
	}
}

// cpuLimit reads the runtime's default GOMAXPROCS and puts back the value
// it is given.
func TestCPULimit(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	// The CPUs in the affinity mask, or a cgroup quota below them
	// (rounded up, and at least 2).
	n := runtime.NumCPU()
	if got := cpuLimit(1); got < min(2, n) || got > n {
		t.Errorf("cpuLimit = %d with %d CPUs", got, n)
	}
	if now := runtime.GOMAXPROCS(0); now != 1 {
		t.Errorf("GOMAXPROCS after cpuLimit(1) = %d, want 1", now)
	}
}

// The controller rests after procsRestAfter idle samples on one P, not
// before, nor while it has more Ps or any use; a loop's wake-up ends the
// rest.
func TestProcsControlRests(t *testing.T) {
	c := &procsControl{max: 2, p: 2, lastAt: time.Unix(0, 0)}
	feed := feeder(c, new(float64))
	for range procsRestAfter {
		feed(0.001) // idle, but on 2 Ps until procsCalm samples have passed
	}
	if c.p != 1 || c.resting() {
		t.Fatalf("after %d idle samples from 2 Ps: %d Ps, resting %v; want 1 P, not resting yet", procsRestAfter, c.p, c.resting())
	}
	for c.idle < procsRestAfter-1 {
		feed(0.001)
	}
	if c.resting() {
		t.Fatal("resting one sample early")
	}
	feed(0.001)
	if !c.resting() {
		t.Fatalf("not resting after %d idle samples on one P", procsRestAfter)
	}
	feed(0.05) // a little work: no longer idle
	if c.resting() {
		t.Fatal("still resting after a sample at 5% of a core")
	}
	for range procsRestAfter {
		feed(0.001)
	}
	c.woken()
	if c.resting() {
		t.Fatal("still resting after a loop woke")
	}
}

// TestSchedLatencyReads checks that the scheduler's latency histogram is
// there and gives a share between 0 and 1.
func TestSchedLatencyReads(t *testing.T) {
	var l schedLatency
	l.slowShare()
	for range 1000 {
		go func() {}()
	}
	if s := l.slowShare(); s < 0 || s > 1 || len(l.last) == 0 {
		t.Fatalf("slowShare = %v with %d buckets", s, len(l.last))
	}
}

// Fewer loops accept only while few connections are open.
func TestSpreadFor(t *testing.T) {
	for _, tc := range []struct {
		p, max int
		open   int64
		want   int
	}{
		{1, 2, 0, 1},
		{1, 2, 127, 1},
		{1, 2, 128, 2}, // 64 per loop: every loop accepts
		{2, 2, 0, 2},
		{3, 8, 511, 3},
		{3, 8, 512, 8},
		{8, 8, 10, 8},
	} {
		if got := spreadFor(tc.p, tc.max, tc.open); got != tc.want {
			t.Errorf("spreadFor(%d, %d, %d) = %d, want %d", tc.p, tc.max, tc.open, got, tc.want)
		}
	}
}
