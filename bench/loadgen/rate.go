package main

import (
	"flag"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Phases of a timed run. Operations are recorded only if they start and end
// in phaseMeasure.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// rateRun is the outcome of a timed rate run.
type rateRun struct {
	lats    []time.Duration // sorted latencies of the measured operations
	errors  int64
	elapsed time.Duration
	ticks   int64 // proxy CPU over elapsed
	marked  int64 // growth of the mark counter over elapsed
}

// runRate runs C workers that each loop connect, send size bytes, receive
// them back, close; it reports connections/s, latency percentiles and the
// proxy's CPU per connection.
func runRate(args []string) error {
	fs := flag.NewFlagSet("rate", flag.ContinueOnError)
	cf := addClientFlags(fs)
	workers := fs.Int("c", 16, "concurrent workers")
	x := addExchangeFlags(fs, time.Second, 5*time.Second)
	if err := fs.Parse(args); err != nil {
		return err
	}
	src, err := parseSourceIPs(cf.src)
	if err != nil {
		return err
	}
	run, err := timedRate(cf, *workers, x.warmup, x.dur, func(phase *atomic.Int32) ([]time.Duration, int64) {
		return rateWorker(phase, src, cf.target, x.size, x.timeout)
	}, nil)
	if err != nil {
		return err
	}
	n := len(run.lats)
	fmt.Printf("rate %s: %d connections in %v, %d errors\n", cf.target, n, run.elapsed.Round(time.Millisecond), run.errors)
	if n == 0 {
		return fmt.Errorf("no successful connection")
	}
	return run.report(cf, runMetrics{"conns_per_s", "p50_ms", "p99_ms", "errors", "cpu_us_per_conn"})
}

// runMetrics names what a timed run reports: operations per second,
// latency percentiles, errors, and the proxy's CPU µs per operation.
type runMetrics struct{ rate, p50, p99, errors, cpu string }

// report writes run's figures under the names of m (the CPU only with a
// pid to sample). run must have at least one operation.
func (run rateRun) report(cf *clientFlags, m runMetrics) error {
	n := len(run.lats)
	r := &results{f: cf}
	r.add(m.rate, float64(n)/run.elapsed.Seconds())
	r.add(m.p50, ms(percentile(run.lats, 50)))
	r.add(m.p99, ms(percentile(run.lats, 99)))
	r.add(m.errors, float64(run.errors))
	if cf.pid != 0 {
		r.add(m.cpu, float64(run.ticks)*1e6/clockTicksPerSecond/float64(n))
	}
	return r.flush()
}

// timedRate runs workers through the warm-up and measured phases and samples
// the proxy's CPU, and mark if not nil (a counter of other work, such as
// bytes moved), at the measured phase's edges.
func timedRate(cf *clientFlags, workers int, warmup, dur time.Duration,
	work func(*atomic.Int32) ([]time.Duration, int64), mark *atomic.Int64) (rateRun, error) {
	var phase atomic.Int32
	lats := make([][]time.Duration, workers)
	errs := make([]int64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { lats[w], errs[w] = work(&phase) })
	}
	defer wg.Wait()
	defer phase.Store(phaseStop)
	time.Sleep(warmup)
	cpu0, err := proxyTicks(cf.pid)
	if err != nil {
		return rateRun{}, err
	}
	var mark0 int64
	if mark != nil {
		mark0 = mark.Load()
	}
	t0 := time.Now()
	phase.Store(phaseMeasure)
	time.Sleep(dur)
	phase.Store(phaseStop)
	run := rateRun{elapsed: time.Since(t0)}
	if mark != nil {
		run.marked = mark.Load() - mark0
	}
	cpu1, err := proxyTicks(cf.pid)
	if err != nil {
		return rateRun{}, err
	}
	wg.Wait()
	run.lats, run.ticks = slices.Concat(lats...), cpu1-cpu0
	slices.Sort(run.lats)
	for _, e := range errs {
		run.errors += e
	}
	return run, nil
}

// rateWorker loops until phaseStop; it returns the latencies of the
// operations done entirely within phaseMeasure and the number of errors there.
func rateWorker(phase *atomic.Int32, src *sourceIPs, target string, size int, timeout time.Duration) ([]time.Duration, int64) {
	msg, buf := echoMessage(size), make([]byte, size)
	lats := make([]time.Duration, 0, 1<<15)
	var nerr int64
	for {
		p := phase.Load()
		if p == phaseStop {
			return lats, nerr
		}
		start := time.Now()
		err := connectOnce(src, target, msg, buf, timeout)
		lat := time.Since(start)
		if p != phaseMeasure || phase.Load() != phaseMeasure {
			continue
		}
		if err != nil {
			if nerr++; nerr <= 3 {
				fmt.Printf("rate: %v\n", err)
			}
			continue
		}
		lats = append(lats, lat)
	}
}

// connectOnce is one measured operation: connect, round trip, close.
func connectOnce(src *sourceIPs, target string, msg, buf []byte, timeout time.Duration) error {
	c, err := dialFrom(src.Next(), target, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	return roundTrip(c, msg, buf)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// proxyTicks is the proxy tree's CPU time in ticks, or 0 without a pid.
func proxyTicks(pid int) (int64, error) {
	if pid == 0 {
		return 0, nil
	}
	return cpuTicksTree(pid)
}
