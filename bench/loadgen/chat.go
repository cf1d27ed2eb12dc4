package main

import (
	"flag"
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// runChat is a socket.io-like steady state: -n long-lived connections,
// opened one after another at -open-rate per second (a quiet spell, as
// clients come back after a deploy), then each exchanging -size byte
// messages with the echo backend as fast as its round trips allow. It
// reports messages/s, round-trip percentiles and the proxy's CPU per
// message: whether the connections' work spreads over the proxy's cores
// however they were placed when they opened.
func runChat(args []string) error {
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	cf := addClientFlags(fs)
	n := fs.Int("n", 100, "long-lived connections")
	openRate := fs.Int("open-rate", 50, "connections opened per second before the run (0: all at once)")
	x := addExchangeFlags(fs, 2*time.Second, 5*time.Second)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n <= 0 {
		return fmt.Errorf("-n %d: want > 0", *n)
	}
	src, err := parseSourceIPs(cf.src)
	if err != nil {
		return err
	}
	msg := echoMessage(x.size)
	conns, err := openChats(src, cf.target, *n, *openRate, msg, x.timeout)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		return err
	}
	var next atomic.Int32
	run, err := timedRate(cf, *n, x.warmup, x.dur, func(phase *atomic.Int32) ([]time.Duration, int64) {
		return chatWorker(phase, conns[next.Add(1)-1], msg, x.timeout)
	}, nil)
	if err != nil {
		return err
	}
	m := len(run.lats)
	fmt.Printf("chat %s: %d messages on %d connections in %v, %d errors\n", cf.target, m, *n, run.elapsed.Round(time.Millisecond), run.errors)
	if m == 0 {
		return fmt.Errorf("no message echoed")
	}
	return run.report(cf, runMetrics{"chat_msgs_per_s", "chat_p50_ms", "chat_p99_ms", "chat_errors", "chat_cpu_us_per_msg"})
}

// openChats opens n echo connections at rate per second (0: no pause),
// each with one round trip, so that the proxy has placed and dialed it.
func openChats(src *sourceIPs, target string, n, rate int, msg []byte, timeout time.Duration) ([]*net.TCPConn, error) {
	conns := make([]*net.TCPConn, 0, n)
	buf := make([]byte, len(msg))
	start := time.Now()
	for i := range n {
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		}
		c, err := dialFrom(src.Next(), target, timeout)
		if err == nil {
			c.SetDeadline(time.Now().Add(timeout))
			err = roundTrip(c, msg, buf)
			c.SetDeadline(time.Time{})
		}
		if err != nil {
			if c != nil {
				c.Close()
			}
			return conns, fmt.Errorf("chat connection %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// chatWorker exchanges msg on c until phaseStop; it returns the round
// trips done entirely within phaseMeasure and the errors there. After an
// error the connection is spent: the worker stops.
func chatWorker(phase *atomic.Int32, c *net.TCPConn, msg []byte, timeout time.Duration) ([]time.Duration, int64) {
	buf := make([]byte, len(msg))
	lats := make([]time.Duration, 0, 1<<14)
	for {
		p := phase.Load()
		if p == phaseStop {
			return lats, 0
		}
		start := time.Now()
		c.SetDeadline(start.Add(timeout))
		err := roundTrip(c, msg, buf)
		lat := time.Since(start)
		if err != nil {
			if p == phaseMeasure && phase.Load() == phaseMeasure {
				fmt.Printf("chat: %v\n", err)
				return lats, 1
			}
			return lats, 0
		}
		if p == phaseMeasure && phase.Load() == phaseMeasure {
			lats = append(lats, lat)
		}
	}
}
