package daemon

import (
	"runtime"
	"sync"
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
		p, _ := c.step(cpu, now, waits{slow: uint64(*slow * 1000), all: 1000}, work{})
		return p
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
// there and counts the wake-ups since the last read: 1000 goroutines
// started and waited for give the runtime's sample of them (one in
// eight), no more slow ones than all, and a share between 0 and 1.
func TestSchedLatencyReads(t *testing.T) {
	var l schedLatency
	l.read()
	var wg sync.WaitGroup
	for range 1000 {
		wg.Go(func() {})
	}
	wg.Wait()
	w := l.read()
	if w.all == 0 || w.slow > w.all || len(l.last) == 0 {
		t.Fatalf("read = %+v with %d buckets, want some wake-ups tracked", w, len(l.last))
	}
	if s := w.share(); s < 0 || s > 1 {
		t.Fatalf("share = %v", s)
	}
	if (waits{}).share() != 0 {
		t.Fatal("share of no wake-ups is not 0")
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

// load is one sample period's load for trialFeeder: CPU use in cores, the
// share of tracked wake-ups that waited long, and the loops' work per
// second.
type load struct {
	cores, slow  float64
	conns, bytes float64
}

// trialFeeder returns what gives c one sample period of a load, and
// returns the Ps it then wants and a finished trial's outcome.
func trialFeeder(c *procsControl) (feed func(load) (int, *trialOutcome), clock func() time.Time) {
	now, cpu := c.lastAt, c.lastCPU
	var w work
	feed = func(l load) (int, *trialOutcome) {
		now = now.Add(procsPeriod)
		cpu += time.Duration(l.cores * float64(procsPeriod))
		w.conns += int64(l.conns * procsPeriod.Seconds())
		w.bytes += int64(l.bytes * procsPeriod.Seconds())
		return c.step(cpu, now, waits{slow: uint64(l.slow*1000 + 0.5), all: 1000}, w)
	}
	return feed, func() time.Time { return now }
}

// trialTill feeds l until a trial ends, at most limit samples, and
// returns its outcome and the Ps in use during it.
func trialTill(t *testing.T, feed func(load) (int, *trialOutcome), l load, limit int) (out *trialOutcome, during []int) {
	t.Helper()
	for range limit {
		p, out := feed(l)
		if out != nil {
			return out, during
		}
		during = append(during, p)
	}
	t.Fatalf("no trial ended in %d samples of %+v; Ps %v", limit, l, during)
	return nil, nil
}

// The controller tells a load that a P only costs (an open loop: the
// work rate holds with one fewer) from one that the P serves (a closed
// loop: the rate falls), between its CPU thresholds, where the latency
// rule's P would otherwise stay.
func TestProcsControlTrial(t *testing.T) {
	c := &procsControl{max: 2, p: 2, lastAt: time.Unix(0, 0), trials: true}
	feed, now := trialFeeder(c)
	// An open loop at 3000/s on 2 Ps: 0.57 of a core, and 2.5% of the
	// wake-ups waiting long in each sample (over the 1% that blocks
	// dropping a P on CPU alone, and not under procsTrialSlow).
	open := load{cores: 0.57, slow: 0.025, conns: 3000, bytes: 3000 * 128}
	for i := range procsTrialLen - 1 {
		if p, out := feed(open); p != 2 || out != nil {
			t.Fatalf("sample %d: %d Ps, trial %v; want 2 and none before %d steady samples", i, p, out, procsTrialLen)
		}
	}
	if p, _ := feed(open); p != 2 {
		t.Fatalf("%d steady samples: %d Ps, want 2 (a trial only with fewer slow wake-ups)", procsTrialLen, p)
	}
	open.slow = 0.02 // under procsTrialSlow, pooled over the samples
	out, during := trialTill(t, feed, open, 3*procsTrialLen)
	if out.from != 2 || out.to != 1 || out.kept != 1 || c.p != 1 {
		t.Fatalf("open loop: trial %+v, %d Ps; want 2 -> 1 kept", out, c.p)
	}
	for _, p := range during[len(during)-procsTrialLen:] {
		if p != 1 {
			t.Fatalf("Ps during the trial %v, want 1", during)
		}
	}
	if !c.next.Equal(now().Add(procsTrialHold)) {
		t.Fatalf("next trial at %v, want %v after the last", c.next.Sub(now()), procsTrialHold)
	}

	// A closed loop that a second P serves: the latency rule adds it, and
	// it is tried at once, hold or not. Its rate falls by 15% with one P
	// fewer: the P comes back, and the next trial waits twice as long each
	// time it is needed.
	closed := load{cores: 0.6, slow: 0.2, conns: 4500}
	if p, _ := feed(closed); p != 2 {
		t.Fatalf("goroutines waiting at 1 P: %d Ps, want 2", p)
	}
	closed.slow = 0.02
	for round, hold := range []time.Duration{procsTrialHold, 2 * procsTrialHold, 4 * procsTrialHold} {
		start := now()
		var out *trialOutcome
		for out == nil {
			l := closed
			if c.trial.on {
				l.conns *= 0.85
			}
			var p int
			if p, out = feed(l); out == nil && p == 1 && !c.trial.on {
				t.Fatalf("round %d: 1 P outside a trial", round)
			}
			if now().Sub(start) > 10*time.Minute {
				t.Fatalf("round %d: no trial in 10 minutes", round)
			}
		}
		if out.kept != 2 || c.p != 2 || out.overloaded {
			t.Fatalf("round %d: trial %+v, %d Ps; want the P kept", round, out, c.p)
		}
		if got := c.next.Sub(now()); got != hold {
			t.Fatalf("round %d: next trial in %v, want %v", round, got, hold)
		}
	}
	// A trial that would overload one P fewer ends at once.
	c.next = time.Time{}
	for !c.trial.on {
		feed(closed)
	}
	if p, out := feed(load{cores: 0.9, slow: 0.02, conns: 4500}); p != 2 || out == nil || out.kept != 2 || !out.overloaded {
		t.Fatalf("one P overloaded in a trial: %d Ps, outcome %+v; want 2 at once", p, out)
	}
}

// Goroutines that wait for a P while the loops do nothing (an admin API
// scraped at rest) add no P, and keep none; while the loops work, the
// same waits add one. Without the work counters (the goroutine engine)
// every wait counts.
func TestProcsControlWaitsWithoutWork(t *testing.T) {
	c := &procsControl{max: 2, p: 1, lastAt: time.Unix(0, 0), trials: true}
	feed, _ := trialFeeder(c)
	scrape := load{cores: 0.01, slow: 0.5}
	for i := range 3 * procsCalm {
		if p, _ := feed(scrape); p != 1 {
			t.Fatalf("scrape %d at rest: %d Ps, want 1", i, p)
		}
	}
	if p, _ := feed(load{cores: 0.3, slow: 0.5, conns: 100}); p != 2 {
		t.Fatalf("waits while the loops accept: %d Ps, want 2", p)
	}
	for range procsCalm - 1 {
		feed(scrape)
	}
	if p, _ := feed(scrape); p != 1 {
		t.Fatalf("%d scrapes after the load: %d Ps, want 1", procsCalm, p)
	}

	c = &procsControl{max: 2, p: 1, lastAt: time.Unix(0, 0)}
	feed, _ = trialFeeder(c)
	if p, _ := feed(scrape); p != 2 {
		t.Fatalf("without work counters: %d Ps, want 2", p)
	}
}

// Long-lived connections are compared by the bytes they move; a rate
// that held at the first look is looked at again; and there is no trial
// without work to compare, nor one that one P fewer could not carry, nor
// without the work counters.
func TestProcsControlTrialMeasures(t *testing.T) {
	c := &procsControl{max: 2, p: 2, lastAt: time.Unix(0, 0), trials: true}
	feed, _ := trialFeeder(c)
	chat := load{cores: 0.7, slow: 0.02, conns: 0, bytes: 4e6}
	for range procsTrialLen {
		feed(chat)
	}
	if !c.trial.on {
		t.Fatal("chat: no trial after steady samples")
	}
	chat.bytes = 3.5e6 // -12.5%
	out, _ := trialTill(t, feed, chat, 2*procsTrialLen)
	if out.kept != 2 {
		t.Fatalf("chat moving 12.5%% less on one P: trial %+v, want the P kept", out)
	}

	// The first look finds the rate held, the second a fall: over all
	// the trial's samples it fell by 7.5%, and the P comes back. A rate
	// that holds through both looks keeps one P fewer.
	for _, fall := range []bool{true, false} {
		c := &procsControl{max: 2, p: 2, lastAt: time.Unix(0, 0), trials: true}
		feed, _ := trialFeeder(c)
		l := load{cores: 0.6, slow: 0.02, conns: 4000}
		for range procsTrialLen {
			feed(l)
		}
		if !c.trial.on {
			t.Fatal("closed loop: no trial after steady samples")
		}
		var out *trialOutcome
		counted := 0
		for i := 0; out == nil && i < 3*procsTrialLen; i++ {
			m := l
			if fall && c.trial.n >= procsTrialLen {
				m.conns = 3400
			}
			if c.trial.skip == 0 {
				counted++
			}
			_, out = feed(m)
		}
		want := 1
		if fall {
			want = 2
		}
		if out == nil || out.kept != want || c.p != want || counted != 2*procsTrialLen {
			t.Fatalf("fall after the first look %v: trial %+v after %d counted samples, %d Ps; want %d Ps after %d",
				fall, out, counted, c.p, want, 2*procsTrialLen)
		}
	}

	for _, l := range []load{
		{cores: 0.65, slow: 0.02},                      // nothing moves
		{cores: 0.9, slow: 0.02, conns: 5000},          // one P fewer would be added back
		{cores: 0.55, slow: 0.02, conns: 10, bytes: 0}, // too few connections, no bytes
	} {
		c := &procsControl{max: 2, p: 2, lastAt: time.Unix(0, 0), trials: true}
		feed, _ := trialFeeder(c)
		for range 3 * procsTrialLen {
			if p, _ := feed(l); p != 2 || c.trial.on {
				t.Fatalf("%+v: %d Ps, trial %v; want 2 and no trial", l, p, c.trial.on)
			}
		}
	}
	c = &procsControl{max: 2, p: 2, lastAt: time.Unix(0, 0)} // no work counters
	feed, _ = trialFeeder(c)
	for range 3 * procsTrialLen {
		if p, _ := feed(load{cores: 0.57, slow: 0.02, conns: 3000}); p != 2 || c.trial.on {
			t.Fatalf("without trials: %d Ps, trial %v; want 2", p, c.trial.on)
		}
	}
}
