package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// idleOpts configures runIdle.
type idleOpts struct {
	target   string
	src      *sourceIPs
	parallel int           // concurrent dialers
	timeout  time.Duration // per connection, dial and round trip
	maxFails int           // give up a level after this many failures
}

// runIdle opens connections up to each of -levels in turn, with one small
// round trip each (so the proxy has dialed and written to the backend), lets
// the proxy settle, and reports per connection the growth of the proxy's RSS,
// PSS and file descriptors and of the machine's slab since before the first
// connection. With -hold it then waits for stdin to close or a signal.
func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	cf := addClientFlags(fs)
	levels := fs.String("levels", "1000,5000,9000", "comma-separated connection counts")
	parallel := fs.Int("parallel", 32, "concurrent dialers")
	settle := fs.Duration("settle", 2*time.Second, "wait after reaching a level before sampling")
	hold := fs.Bool("hold", false, "after the last level, hold the connections until stdin closes or SIGINT/SIGTERM")
	if err := fs.Parse(args); err != nil {
		return err
	}
	src, err := parseSourceIPs(cf.src)
	if err != nil {
		return err
	}
	counts, err := parseLevels(*levels)
	if err != nil {
		return err
	}
	o := idleOpts{target: cf.target, src: src, parallel: *parallel, timeout: 3 * time.Second, maxFails: 20}
	r := &results{f: cf}
	conns, err := o.climb(counts, cf.pid, *settle, r)
	defer closeAll(conns)
	if err != nil {
		return err
	}
	if err := r.flush(); err != nil {
		return err
	}
	if *hold {
		waitRelease()
	}
	return nil
}

// climb opens connections up to each level in turn and, with a pid, records
// the proxy's growth per connection at each. It stops at the first level it
// cannot reach (recorded as reached@level) without an error; the error is
// for sampling failures. The caller owns the returned connections.
func (o idleOpts) climb(levels []int, pid int, settle time.Duration, r *results) ([]*net.TCPConn, error) {
	var base procSample
	var err error
	if pid != 0 {
		if base, err = sampleTree(pid); err != nil {
			return nil, err
		}
	}
	var conns []*net.TCPConn
	for _, level := range levels {
		conns, err = o.openUpTo(conns, level)
		fmt.Printf("idle %s: %d connections open\n", o.target, len(conns))
		r.add(fmt.Sprintf("reached@%d", level), float64(len(conns)))
		if err != nil {
			fmt.Printf("idle: level %d not reached: %v\n", level, err)
			return conns, nil
		}
		time.Sleep(settle)
		if pid != 0 {
			s, err := sampleTree(pid)
			if err != nil {
				return conns, err
			}
			addIdleMetrics(r, level, base, s)
		}
	}
	return conns, nil
}

func parseLevels(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || (len(out) > 0 && n <= out[len(out)-1]) {
			return nil, fmt.Errorf("-levels %q: want increasing positive counts", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func addIdleMetrics(r *results, level int, base, s procSample) {
	per := func(d int64) float64 { return float64(d) / float64(level) }
	r.add(fmt.Sprintf("rss_KB_per_conn@%d", level), per(s.RSSKB-base.RSSKB))
	r.add(fmt.Sprintf("pss_KB_per_conn@%d", level), per(s.PssKB-base.PssKB))
	r.add(fmt.Sprintf("fds_per_conn@%d", level), per(s.FDs-base.FDs))
	r.add(fmt.Sprintf("slab_KB_per_conn@%d", level), per(s.SlabKB-base.SlabKB))
}

// openUpTo opens connections until conns holds level of them. It stops early,
// with an error, once maxFails connections have failed.
func (o idleOpts) openUpTo(conns []*net.TCPConn, level int) ([]*net.TCPConn, error) {
	var (
		mu       sync.Mutex // guards conns and lastErr
		lastErr  error
		todo     atomic.Int64
		failures atomic.Int64
		wg       sync.WaitGroup
	)
	todo.Store(int64(level - len(conns)))
	msg := echoMessage(16)
	for range o.parallel {
		wg.Go(func() {
			buf := make([]byte, len(msg))
			for failures.Load() < int64(o.maxFails) && todo.Add(-1) >= 0 {
				c, err := o.openOne(msg, buf)
				mu.Lock()
				if err != nil {
					failures.Add(1)
					todo.Add(1)
					lastErr = err
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(conns) < level {
		return conns, fmt.Errorf("%d failures, last: %w", failures.Load(), lastErr)
	}
	return conns, nil
}

func (o idleOpts) openOne(msg, buf []byte) (*net.TCPConn, error) {
	c, err := dialFrom(o.src.Next(), o.target, o.timeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(o.timeout))
	if err := roundTrip(c, msg, buf); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// closeAll resets the connections (SO_LINGER 0), so that the client side
// leaves no TIME_WAIT sockets behind to skew the next slab reading.
func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		c.SetLinger(0)
		c.Close()
	}
}

// waitRelease blocks until stdin reaches EOF or SIGINT/SIGTERM arrives.
func waitRelease() {
	fmt.Println("READY")
	done := make(chan struct{}, 2)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
		}
		done <- struct{}{}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; done <- struct{}{} }()
	<-done
}
