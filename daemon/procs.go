package daemon

import (
	"context"
	"os"
	"runtime"
	"runtime/metrics"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Adaptive GOMAXPROCS. An idle P costs CPU: whenever a goroutine becomes
// runnable the Go scheduler wakes an idle thread to look for work, which
// spins, finds little and sleeps again. Below saturation that spinning and
// the wake-ups between threads are a large part of what a connection costs
// (measured: open loop at 3000 connections/s on 2 cores, about 12% of the
// CPU per connection). So stickyd runs with as many Ps as its load needs:
// it samples its CPU time every procsPeriod, adds a P when the ones it has
// are nearly full, and gives one back when the others would still have
// room. It never goes above the GOMAXPROCS it started with, and does
// nothing when the GOMAXPROCS environment variable is set. CPU use alone
// cannot tell a proxy short of Ps from one that shares its cores with other
// work, so it also watches the Go scheduler's latency (how long runnable
// goroutines wait for a P): when more than procsSlowShare of them waited
// over procsSlowWait, it adds a P whatever the CPU says, and it never drops
// one while a noticeable share waits. With the epoll engine's work
// counters, waits count only in samples where the loops did work: at rest
// an admin API scrape or a health check makes one of a handful of
// wake-ups wait, a share of 20-100%, for work that one P serves well.
//
// At rest it samples less. Ten samples a second were nearly all that an
// idle stickyd did (about 38 thread wake-ups a second, 2 ms of CPU): so
// once it has used under procsIdle of a core, on one P, for procsRestAfter
// samples in a row, it samples once per procsRestPeriod instead, until an
// event loop wakes after a quiet spell of a second or more (the epoll
// engine tells it: EpollEngine.Woke; keep-alives on open connections that
// wake a loop more often do not). It then samples at once and goes back
// to procsPeriod. Without the epoll engine it never rests.
//
// Its ceiling follows the CPU limit. Go picks the starting GOMAXPROCS from
// the CPUs, the affinity mask and the cgroup CPU quota, and would follow
// them as they change (a container resized in place, a new cpuset), but
// any call to runtime.GOMAXPROCS turns that off. So outside its rests the
// controller asks the runtime once every procsLimitEvery samples what it
// would choose now (cpuLimit) and never uses more Ps than that: more
// threads than the quota allows only get throttled. The event loops are
// made at start, so a limit raised above the starting GOMAXPROCS takes a
// restart to use (the log says so).
//
// Between the thresholds it tries. At the same CPU use, a second P can buy
// a closed loop (clients that wait for each answer before the next
// request: socket.io's round trips, a pool of short connections) 10-20%
// more throughput, and cost an open loop (connections arriving at their
// own pace) 10-15% more CPU per connection for nothing. Neither the CPU
// nor the scheduler's latency tells the two apart, and the latency rule
// can add a P on a single goroutine that waited (the runtime tracks one
// wake-up in eight: a handful a sample), which the latency of the Ps in
// use then keeps. What does tell them apart is the answer to the question
// itself. With the epoll engine the controller reads the loops' work
// (connections accepted, or bytes moved where few connections come:
// EpollEngine.Work), and when the load has sat steady between the
// thresholds for procsTrialLen samples on more than one P, it tries one P
// fewer for procsTrialLen samples. It goes back if the work rate fell by
// procsTrialGain; if not, it looks again after procsTrialLen samples
// more, over all of them, and keeps one fewer only if the rate still
// holds (a closed loop's rate is noisy, and often falls only after the
// first look). The next trial waits procsTrialHold, twice as long after
// each trial that kept the P (up to procsTrialHoldMax), except after a P
// added on the latency rule: that one is tried as soon as the load has
// settled.

const (
	procsPeriod       = 100 * time.Millisecond
	procsGrow         = 0.8 // add a P when CPU use passes this fraction of the Ps
	procsShrink       = 0.6 // drop one when use stays below this fraction of one P fewer
	procsCalm         = 5   // samples in a row below procsShrink before dropping one
	procsSlowWait     = 200e-6
	procsSlowShare    = 0.05
	procsIdle         = 0.02 // cores: below this on one P, a sample is idle
	procsRestAfter    = 20   // idle samples in a row before resting
	procsRestPeriod   = time.Second
	procsLimitEvery   = 10 // samples between two readings of the CPU limit (cpuLimit)
	procsTrialLen     = 8  // samples compared on each side of a trial
	procsTrialGain    = 0.03
	procsTrialConns   = 20 // connections a second: the measure of a trial (gain)
	procsTrialSlow    = procsSlowShare / 2
	procsTrialHold    = 30 * time.Second // between two trials
	procsTrialHoldMax = 8 * time.Minute
)

// procsControl decides the number of Ps from CPU samples. It is not safe
// for concurrent use.
type procsControl struct {
	max, p  int
	calm    int // samples in a row below the shrink threshold
	idle    int // samples in a row under procsIdle on one P
	lastCPU time.Duration
	lastAt  time.Time

	// Trials of one P fewer: only with the loops' work to compare.
	trials   bool
	lastWork work
	rates    [procsTrialLen]workRate // the last samples' rates at p, a ring
	useds    [procsTrialLen]float64  // and their CPU use
	lats     [procsTrialLen]waits    // and their goroutines' waits
	nRates   int                     // samples in rates since p last changed
	trial    procsTrial
	next     time.Time     // no trial before
	hold     time.Duration // after the next trial that keeps the P; 0: procsTrialHold
}

// work is what the event loops have done so far (EpollEngine.Work).
type work struct{ bytes, conns int64 }

// workRate is work per second.
type workRate struct{ bytes, conns float64 }

// procsTrial is a trial under way: from Ps to to.
type procsTrial struct {
	on       bool
	from, to int
	skip     int      // samples left before counting (the change settling)
	n        int      // samples counted
	sum      workRate // their rates, summed
	base     workRate // the mean rate at from, before the trial
}

// trialOutcome is what a finished trial found, for the log.
type trialOutcome struct {
	from, to, kept int
	base, tried    workRate
	overloaded     bool // ended early: one P fewer was over the grow threshold
}

// setMax makes n the most Ps the controller may use (the CPU limit
// changed); Ps above it are dropped at once.
func (c *procsControl) setMax(n int) {
	c.max = max(n, 1)
	if c.trial.on && max(c.trial.from, c.trial.to) > c.max {
		c.trial.on = false
	}
	if c.p > c.max {
		c.p, c.calm, c.nRates = c.max, 0, 0
	}
}

// resting reports whether the samples have been idle long enough to take
// them less often.
func (c *procsControl) resting() bool { return c.idle >= procsRestAfter }

// woken restarts the count of idle samples: an event loop woke.
func (c *procsControl) woken() { c.idle = 0 }

// step takes the process's CPU time at now, the goroutine wake-ups since
// the last step (how many the runtime tracked, and how many of those
// waited over procsSlowWait for a P) and the loops' work (ignored unless
// c.trials), and returns the Ps to use. A finished trial's outcome is in
// done.
func (c *procsControl) step(cpu time.Duration, now time.Time, lat waits, w work) (p int, done *trialOutcome) {
	slow := lat.share()
	wall := now.Sub(c.lastAt)
	used := float64(cpu-c.lastCPU) / float64(max(wall, 1)) // cores
	c.lastCPU, c.lastAt = cpu, now
	rate := workRate{
		bytes: float64(w.bytes-c.lastWork.bytes) / max(wall.Seconds(), 1e-9),
		conns: float64(w.conns-c.lastWork.conns) / max(wall.Seconds(), 1e-9),
	}
	c.lastWork = w
	if c.p == 1 && used < procsIdle {
		c.idle++
	} else {
		c.idle = 0
	}
	if c.trial.on {
		return c.p, c.runTrial(rate, used, now)
	}
	if c.trials && rate == (workRate{}) {
		// The loops did nothing: the goroutines that waited for a P
		// were others (an admin API scrape, a health check), which one
		// P serves well enough. Only the CPU rule applies.
		slow = 0
	}
	was := c.p
	switch {
	case used > procsGrow*float64(c.p) && c.p < c.max:
		c.p++
		c.calm = 0
	case slow > procsSlowShare && c.p < c.max:
		c.p++
		c.calm = 0
		c.next = time.Time{} // on one slow wait, maybe: try without it soon
	case c.p > 1 && used < procsShrink*float64(c.p-1) && slow < procsSlowShare/5:
		if c.calm++; c.calm >= procsCalm {
			c.p--
			c.calm = 0
		}
	default:
		c.calm = 0
	}
	if !c.trials {
		return c.p, nil
	}
	if c.p != was {
		c.nRates = 0
		return c.p, nil
	}
	c.rates[c.nRates%procsTrialLen] = rate
	c.useds[c.nRates%procsTrialLen] = used
	c.lats[c.nRates%procsTrialLen] = lat
	c.nRates++
	if c.nRates >= procsTrialLen && c.calm == 0 && !now.Before(c.next) {
		c.startTrial()
	}
	return c.p, nil
}

// startTrial tries one P fewer, if the last samples used less CPU than
// one fewer may (procsGrow of them), were steady (none under half their
// mean CPU use, or over one and a half), moved something to compare, and
// had few goroutines waiting for a P: under procsTrialSlow of the
// wake-ups of all the samples together, enough of them to mean something
// where a sample's own share rests on a handful.
func (c *procsControl) startTrial() {
	if c.p < 2 {
		return
	}
	var used float64
	var base workRate
	for i, u := range c.useds {
		used += u / procsTrialLen
		base.bytes += c.rates[i].bytes / procsTrialLen
		base.conns += c.rates[i].conns / procsTrialLen
	}
	if used > procsGrow*float64(c.p-1) {
		return // one fewer would be added back at once
	}
	for _, u := range c.useds {
		if u < used/2 || u > used*3/2 {
			return
		}
	}
	if base.bytes <= 0 && base.conns < procsTrialConns {
		return // nothing moves: nothing to compare
	}
	var lat waits
	for _, w := range c.lats {
		lat.slow += w.slow
		lat.all += w.all
	}
	if lat.share() >= procsTrialSlow {
		return // goroutines still wait for the Ps in use: all are needed
	}
	c.trial = procsTrial{on: true, from: c.p, to: c.p - 1, skip: 1, base: base}
	c.p--
	c.calm = 0
}

// runTrial takes one sample of a trial, and ends it after procsTrialLen
// counted samples if the rate fell, after twice as many if it did not
// (the second look, over all of them, confirms what the first found on
// a noisy rate), or at once if one P fewer is overloaded.
func (c *procsControl) runTrial(rate workRate, used float64, now time.Time) *trialOutcome {
	t := &c.trial
	if used > procsGrow*float64(t.to) {
		c.endTrial(t.from, now)
		return &trialOutcome{from: t.from, to: t.to, kept: t.from, base: t.base, overloaded: true}
	}
	if t.skip > 0 {
		t.skip--
		return nil
	}
	t.sum.bytes += rate.bytes
	t.sum.conns += rate.conns
	if t.n++; t.n != procsTrialLen && t.n != 2*procsTrialLen {
		return nil // not at one of the two looks
	}
	tried := workRate{bytes: t.sum.bytes / float64(t.n), conns: t.sum.conns / float64(t.n)}
	kept := t.to // one fewer did as much
	if gain(t.base, tried) <= -procsTrialGain {
		kept = t.from
	} else if t.n == procsTrialLen {
		return nil // look again
	}
	c.endTrial(kept, now)
	return &trialOutcome{from: t.from, to: t.to, kept: kept, base: t.base, tried: tried}
}

// endTrial ends the trial with p Ps and sets when the next may start.
func (c *procsControl) endTrial(p int, now time.Time) {
	hold := procsTrialHold
	if p == c.trial.from { // the P was needed: ask again less often
		hold = max(c.hold, procsTrialHold)
		c.hold = min(2*hold, procsTrialHoldMax)
	} else {
		c.hold = 0
	}
	c.trial.on = false
	c.p, c.calm, c.nRates = min(p, c.max), 0, 0
	c.next = now.Add(hold)
}

// gain returns the relative change of the work rate from base to tried:
// of the connections accepted when base has a few a second, of the bytes
// moved otherwise (long-lived connections). The bytes of short
// connections are no measure: a client's first bytes read with its accept
// are written by the acceptor, not by a loop, and so counted or not
// depending on when they arrive.
func gain(base, tried workRate) float64 {
	if base.conns >= procsTrialConns {
		return tried.conns/base.conns - 1
	}
	return tried.bytes/base.bytes - 1
}

// logTrial shows a finished trial at debug level: the rates compared, or
// that one P fewer was overloaded (no rate was measured then).
func logTrial(log *zap.Logger, t *trialOutcome) {
	fields := []zap.Field{zap.Int("from", t.from), zap.Int("tried", t.to), zap.Int("kept", t.kept),
		zap.Float64("bytes_per_s", t.base.bytes), zap.Float64("conns_per_s", t.base.conns)}
	if t.overloaded {
		fields = append(fields, zap.Bool("overloaded", true))
	} else {
		fields = append(fields, zap.Float64("tried_bytes_per_s", t.tried.bytes), zap.Float64("tried_conns_per_s", t.tried.conns))
	}
	log.Debug("GOMAXPROCS trial", fields...)
}

// procsHooks connects adaptProcs to the daemon; each may be nil.
type procsHooks struct {
	// onTick is told the Ps in force after every step, and the starting
	// number at the end (the daemon then chooses how many event loops
	// accept: spreadFor), with the most it may use now.
	onTick func(p, max int)
	// woke receives when an event loop wakes after a quiet spell: only
	// then does the controller rest.
	woke <-chan struct{}
	// loops reads the event loops' work (EpollEngine.Work): only then
	// does the controller try Ps between its thresholds.
	loops func() (bytes, conns int64)
	// onTrial is told how each trial ended: one P fewer kept (dropped) or
	// the P back.
	onTrial func(dropped bool)
}

// adaptive reports whether adaptProcs adapts GOMAXPROCS: not when the
// GOMAXPROCS environment variable fixes it, nor on one CPU.
func adaptive() bool {
	_, set := os.LookupEnv("GOMAXPROCS")
	return !set && runtime.GOMAXPROCS(0) >= 2
}

// adaptProcs adjusts GOMAXPROCS to the load until ctx ends, then restores
// the starting value, if adaptive.
func adaptProcs(ctx context.Context, log *zap.Logger, h procsHooks) {
	if !adaptive() {
		return
	}
	onTick, woke := h.onTick, h.woke
	start := runtime.GOMAXPROCS(0)
	c := &procsControl{max: start, p: start, lastCPU: processCPU(), lastAt: time.Now(), trials: h.loops != nil}
	readWork := func() work {
		if h.loops == nil {
			return work{}
		}
		b, n := h.loops()
		return work{b, n}
	}
	c.lastWork = readWork()
	var lat schedLatency
	lat.read()
	log.Debug("adaptive GOMAXPROCS", zap.Int("max", start))
	t := time.NewTicker(procsPeriod)
	defer t.Stop()
	defer func() {
		runtime.GOMAXPROCS(start)
		if onTick != nil {
			onTick(start, start)
		}
	}()
	resting := false
	var wake <-chan struct{} // woke while resting
	limit, sinceLimit := start, 0
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		case <-wake:
			now = time.Now()
			c.woken()
			sinceLimit = procsLimitEvery // the limit may have changed during the rest
		}
		if !resting {
			if sinceLimit++; sinceLimit >= procsLimitEvery {
				sinceLimit = 0
				if l := cpuLimit(c.p); l != limit {
					limit = l
					c.setMax(min(l, start))
					logLimit(log, l, start)
				}
			}
		}
		p, tried := c.step(processCPU(), now, lat.read(), readWork())
		if tried != nil {
			if h.onTrial != nil {
				h.onTrial(tried.kept < tried.from)
			}
			logTrial(log, tried)
		}
		if p != runtime.GOMAXPROCS(0) {
			runtime.GOMAXPROCS(p)
			log.Debug("GOMAXPROCS adapted to the load", zap.Int("gomaxprocs", p))
		}
		if onTick != nil {
			onTick(p, c.max)
		}
		if rest := woke != nil && c.resting(); rest != resting {
			resting, wake = rest, nil
			period := procsPeriod
			if rest {
				drain(woke) // a wake-up from before the rest is stale
				wake, period = woke, procsRestPeriod
			}
			t.Reset(period)
			log.Debug("GOMAXPROCS controller", zap.Bool("resting", rest))
		}
	}
}

// cpuLimit returns the GOMAXPROCS that the Go runtime would choose now
// (CPUs, affinity mask, cgroup CPU quota; at least 2 where there are 2
// CPUs, as at start) and sets GOMAXPROCS back to p. The runtime reads the
// quota its own way (cgroup v1 and v2, nested limits), and exports no
// other way to ask it; the cost is one or two stops of the world, as an
// adaptation of GOMAXPROCS costs.
func cpuLimit(p int) int {
	runtime.SetDefaultGOMAXPROCS()
	return runtime.GOMAXPROCS(p)
}

// warnProcsOverLimit warns, once at start, when the GOMAXPROCS environment
// variable asks for more Ps, and so more event loops, than the CPU limit
// gives: the loops then take turns on fewer CPUs, and under a cgroup quota
// the threads beyond it are throttled.
func warnProcsOverLimit(log *zap.Logger) {
	v, set := os.LookupEnv("GOMAXPROCS")
	if !set {
		return
	}
	n := runtime.GOMAXPROCS(0)
	if l := cpuLimit(n); n > l {
		log.Warn("GOMAXPROCS is above the CPU limit: more event loops than CPUs to run them",
			zap.String("GOMAXPROCS", v), zap.Int("event_loops", n), zap.Int("cpu_limit", l),
			zap.String("fix", "unset GOMAXPROCS (stickyd then adapts to the load within the limit), or set it to the limit at most"))
	}
}

// logLimit says what a new CPU limit of l Ps means for stickyd, started
// with start (and as many event loops).
func logLimit(log *zap.Logger, l, start int) {
	if l < start {
		log.Info("CPU limit lowered: GOMAXPROCS and the accepting event loops stay within it",
			zap.Int("cpu_limit", l), zap.Int("event_loops", start))
		return
	}
	if l > start {
		log.Warn("CPU limit raised above what stickyd started with: it has one event loop per CPU of its start; restart it to use the new limit",
			zap.Int("cpu_limit", l), zap.Int("event_loops", start))
		return
	}
	log.Info("CPU limit back to what stickyd started with", zap.Int("cpu_limit", l), zap.Int("event_loops", start))
}

// drain takes what ch holds, without waiting.
func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

// processCPU is the CPU time (user and system) of the whole process.
func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// schedLatency reads the Go scheduler's latency histogram.
type schedLatency struct {
	sample [1]metrics.Sample
	last   []uint64 // bucket counts at the previous read
}

// waits counts goroutine wake-ups that the runtime tracked (all) and
// those of them that waited over procsSlowWait for a P (slow).
type waits struct{ slow, all uint64 }

// share is the share of slow wake-ups; 0 when none was tracked.
func (w waits) share() float64 {
	if w.all == 0 {
		return 0
	}
	return float64(w.slow) / float64(w.all)
}

// read returns the wake-ups tracked since the previous call.
func (l *schedLatency) read() waits {
	l.sample[0].Name = "/sched/latencies:seconds"
	metrics.Read(l.sample[:])
	if l.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return waits{}
	}
	h := l.sample[0].Value.Float64Histogram()
	var all, slow uint64
	for i, n := range h.Counts {
		if i < len(l.last) {
			n -= l.last[i]
		}
		all += n
		if h.Buckets[i] >= procsSlowWait { // the bucket's lower bound
			slow += n
		}
	}
	l.last = append(l.last[:0], h.Counts...)
	return waits{slow: slow, all: all}
}

// spreadOpenPerLoop is how many open client connections per event loop
// (max Ps) turn Spread off: past it every loop accepts.
const spreadOpenPerLoop = 64

// spreadFor is how many event loops accept with p of max Ps and open
// client connections: p while few are open, so that at low load the loops
// beyond the Ps park instead of each waking for its share of the
// connections; max past spreadOpenPerLoop per loop. A connection stays on
// the loop that accepted it unless it turns into a bulk transfer (those
// move: relay/epoll_move.go), so many long-lived connections opened in a
// quiet spell (websockets that may all get busy later) must not all land
// on the loops of a low-load moment: the kernel's hash spreads them over
// every loop.
func spreadFor(p, max int, open int64) int {
	if open >= int64(spreadOpenPerLoop*max) {
		return max
	}
	return p
}
