package main

import (
	"flag"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// runOpen is an open-loop run: connections (connect, echo, close as in
// rate) start at a fixed -rate per second whatever the proxy's latency, as
// a proxy well below saturation sees them. It reports the rate reached,
// latency percentiles and the proxy's CPU per connection, with metric
// names suffixed @rate.
func runOpen(args []string) error {
	fs := flag.NewFlagSet("open", flag.ContinueOnError)
	cf := addClientFlags(fs)
	rate := fs.Int("rate", 1000, "connections started per second")
	x := addExchangeFlags(fs, time.Second, 5*time.Second)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rate <= 0 {
		return fmt.Errorf("-rate %d: want > 0", *rate)
	}
	src, err := parseSourceIPs(cf.src)
	if err != nil {
		return err
	}
	run, err := timedRate(cf, 1, x.warmup, x.dur, func(phase *atomic.Int32) ([]time.Duration, int64) {
		return openLoop(phase, *rate, func() error {
			return connectOnce(src, cf.target, echoMessage(x.size), make([]byte, x.size), x.timeout)
		})
	}, nil)
	if err != nil {
		return err
	}
	n := len(run.lats)
	fmt.Printf("open %s: %d connections in %v at %d/s offered, %d errors\n", cf.target, n, run.elapsed.Round(time.Millisecond), *rate, run.errors)
	if n == 0 {
		return fmt.Errorf("no successful connection")
	}
	at := func(metric string) string { return fmt.Sprintf("%s@%d", metric, *rate) }
	return run.report(cf, runMetrics{at("open_conns_per_s"), at("open_p50_ms"), at("open_p99_ms"), at("open_errors"), at("open_cpu_us_per_conn")})
}

// openLoop starts op rate times per second, each on a goroutine of its
// own, until phaseStop; it returns the latencies of the operations done
// entirely within phaseMeasure, sorted, and their errors.
func openLoop(phase *atomic.Int32, rate int, op func() error) ([]time.Duration, int64) {
	var mu sync.Mutex
	var lats []time.Duration // guarded by mu
	var nerr int64           // guarded by mu
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; phase.Load() != phaseStop; i++ {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		wg.Go(func() {
			p := phase.Load()
			t0 := time.Now()
			err := op()
			lat := time.Since(t0)
			if p != phaseMeasure || phase.Load() != phaseMeasure {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if nerr++; nerr <= 3 {
					fmt.Printf("open: %v\n", err)
				}
				return
			}
			lats = append(lats, lat)
		})
	}
	wg.Wait()
	slices.Sort(lats)
	return lats, nerr
}
