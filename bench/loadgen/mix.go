package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// runMix runs -bulk downloads that never end (the backend sources bytes,
// the client drops them with MSG_TRUNC) and, beside them, -c workers
// looping connect, echo, close as in rate. It reports the short
// connections' latency and rate, and the downloads' total MB/s: whether new
// connections starve behind bulk transfers.
func runMix(args []string) error {
	fs := flag.NewFlagSet("mix", flag.ContinueOnError)
	cf := addClientFlags(fs)
	bulk := fs.Int("bulk", 60, "concurrent downloads")
	workers := fs.Int("c", 8, "short-connection workers")
	x := addExchangeFlags(fs, 2*time.Second, 10*time.Second) // the downloads ramp up
	if err := fs.Parse(args); err != nil {
		return err
	}
	src, err := parseSourceIPs(cf.src)
	if err != nil {
		return err
	}
	var moved atomic.Int64
	streams, err := startDownloads(src, cf.target, *bulk, &moved)
	if err != nil {
		return err
	}
	run, err := timedRate(cf, *workers, x.warmup, x.dur, func(phase *atomic.Int32) ([]time.Duration, int64) {
		return rateWorker(phase, src, cf.target, x.size, x.timeout)
	}, &moved)
	failed := streams.stop()
	if err != nil {
		return err
	}
	n := len(run.lats)
	fmt.Printf("mix %s: %d short connections and %d downloads in %v, %d errors, %d downloads failed\n",
		cf.target, n, *bulk, run.elapsed.Round(time.Millisecond), run.errors, failed)
	if n == 0 {
		return fmt.Errorf("no successful short connection")
	}
	r := &results{f: cf}
	r.add("mix_conns_per_s", float64(n)/run.elapsed.Seconds())
	r.add("mix_p50_ms", ms(percentile(run.lats, 50)))
	r.add("mix_p99_ms", ms(percentile(run.lats, 99)))
	r.add("mix_MBps", float64(run.marked)/1e6/run.elapsed.Seconds())
	r.add("mix_errors", float64(run.errors+int64(failed)))
	return r.flush()
}

// downloads are the bulk connections of a mix run.
type downloads struct {
	conns  []*net.TCPConn
	wg     sync.WaitGroup
	failed atomic.Int32
	done   atomic.Bool
}

// startDownloads opens n endless downloads whose bytes are added to moved.
func startDownloads(src *sourceIPs, target string, n int, moved *atomic.Int64) (*downloads, error) {
	d := &downloads{}
	for range n {
		c, err := dialFrom(src.Next(), target, 5*time.Second)
		if err == nil {
			_, err = c.Write(sizedCommand(cmdSource, 1<<40))
		}
		if err != nil {
			d.stop()
			return nil, fmt.Errorf("download: %w", err)
		}
		d.conns = append(d.conns, c)
		d.wg.Go(func() {
			if err := drain(c, moved); err != nil && !d.done.Load() {
				if d.failed.Add(1) == 1 {
					fmt.Printf("mix: download: %v\n", err)
				}
			}
		})
	}
	return d, nil
}

// stop ends the downloads and returns how many failed before.
func (d *downloads) stop() int {
	d.done.Store(true)
	for _, c := range d.conns {
		c.SetReadDeadline(time.Now())
	}
	d.wg.Wait()
	for _, c := range d.conns {
		c.Close()
	}
	return int(d.failed.Load())
}

// drain reads and drops c's bytes (MSG_TRUNC) until an error, counting
// them in moved.
func drain(c *net.TCPConn, moved *atomic.Int64) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	for serr == nil {
		err = rc.Read(func(fd uintptr) bool {
			k, _, err := unix.Recvfrom(int(fd), truncBuf, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EAGAIN) {
				return false
			}
			switch {
			case err != nil:
				serr = err
			case k == 0:
				serr = fmt.Errorf("early EOF")
			default:
				moved.Add(int64(k))
			}
			return true
		})
		if err != nil {
			return err
		}
	}
	return serr
}
