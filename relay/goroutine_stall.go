//go:build linux

package relay

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Stalls. The goroutine engine implements Idle and Linger with read
// deadlines, which see nothing while a direction is blocked writing to a
// peer that takes nothing (a client that stopped reading): no read is
// under way to time out on that side, and on the other side the peer may
// be gone (a backend that closed or reset, its end not read yet). So a
// pair with either timeout has a stall watch: a timer that looks, a
// quarter of the shortest timeout apart, at what the kernel says moved on
// both TCP sockets (TCP_INFO: bytes each peer acknowledged, bytes received
// from it) and whether a peer has closed. When nothing has moved for
// Idle, or for Linger once a side has closed, it ends the pair as idle,
// cutting short the blocked write (the bytes it held are dropped, as any
// timeout drops them).

// stallWatch is a pair's stall watch. mu guards it against the pair's end.
type stallWatch struct {
	mu    sync.Mutex
	timer *time.Timer
	ended bool      // the pair has ended: no more looks
	fired bool      // the watch ended the pair (Stats.Err ErrIdle)
	moved uint64    // bytes moved at the last look
	since time.Time // when moved last changed
}

// stallTick is how often the watch looks, for timeouts idle and linger.
func stallTick(idle, linger time.Duration) time.Duration {
	shortest := idle
	if shortest == 0 || linger > 0 && linger < shortest {
		shortest = linger
	}
	return max(shortest/4, 10*time.Millisecond)
}

// watchStalls starts gp's stall watch, if it has a timeout and both its
// sockets are TCP (a Unix socket has no TCP_INFO; its reads still time
// out).
func (gp *goPair) watchStalls() {
	if gp.Idle <= 0 && gp.Linger <= 0 {
		return
	}
	moved, _, ok := gp.tcpMoved()
	if !ok {
		return
	}
	w := &gp.stall
	w.moved, w.since = moved, time.Now()
	w.timer = time.AfterFunc(stallTick(gp.Idle, gp.Linger), gp.lookForStall)
}

// lookForStall is the watch's timer: it ends the pair if nothing moved
// for its timeout, and looks again later otherwise.
func (gp *goPair) lookForStall() {
	w := &gp.stall
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return
	}
	moved, closed, ok := gp.tcpMoved()
	now := time.Now()
	if ok && moved != w.moved {
		w.moved, w.since = moved, now
	}
	period := gp.Idle
	if (closed || gp.ended.Load() > 0) && gp.Linger > 0 {
		period = gp.Linger
	}
	if ok && period > 0 && now.Sub(w.since) >= period {
		w.fired = true
		gp.abort()
		gp.Client.SetWriteDeadline(now) // the blocked write too
		gp.Backend.SetWriteDeadline(now)
		return
	}
	w.timer.Reset(stallTick(gp.Idle, gp.Linger))
}

// endStallWatch stops the watch at the pair's end; it reports whether the
// watch had ended the pair.
func (gp *goPair) endStallWatch() bool {
	w := &gp.stall
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended = true
	if w.timer != nil {
		w.timer.Stop()
	}
	return w.fired
}

// tcpMoved sums what the kernel says moved on gp's sockets, and reports
// whether a peer has closed (FIN received, or the socket reset); ok is
// false if a socket has no TCP_INFO.
func (gp *goPair) tcpMoved() (moved uint64, closed, ok bool) {
	for _, c := range [2]Conn{gp.Client, gp.Backend} {
		info := tcpInfo(c)
		if info == nil {
			return 0, false, false
		}
		moved += info.Bytes_acked + info.Bytes_received
		switch info.State {
		case unix.BPF_TCP_CLOSE, unix.BPF_TCP_CLOSE_WAIT, unix.BPF_TCP_LAST_ACK:
			closed = true
		}
	}
	return moved, closed, true
}
