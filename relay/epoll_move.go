//go:build linux

package relay

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Moving bulk pairs between loops. A pair stays on the loop that accepted
// it, and the kernel (SO_REUSEPORT) or Accepting.Spread picks that loop
// when the connection opens, before anyone knows which connections will
// carry bulk transfers: 60 downloads opened after a quiet spell may all sit
// on one loop, which then moves them on one core while the others idle.
// So when a pair turns bulk (its first splice pipe), a loop that holds at
// least two bulk pairs more than the least loaded one hands it over, at the
// end of the batch: out of its epoll set, wheel, table and ready queue,
// into the other loop's inbox and set. Everything else of the pair (its
// pipes and the bytes in them, pending bytes, ends, timeouts) travels with
// it; the new loop assumes both sockets readable and writable, which costs
// at most an EAGAIN each.
//
// Busy loops shed chatty pairs. Connections that never turn bulk can
// crowd a loop too: long-lived websockets opened in a quiet spell, while
// one loop accepted (Accepting.Spread), that all get busy later. So each
// loop weighs every loop's busy clock over a window (epLoadWindow,
// 100 ms). When it was busy more than half the window, and a quarter of
// the window more than the least busy loop that may take pairs (one that
// accepts: the daemon keeps those to its Ps), it hands that loop enough of
// its active pairs to close half the gap, as they are next served. A pair
// it picks is not bulk, moves bytes in this window and has been on the
// loop for epShedAge windows at least: short connections, which would end
// before a move paid for itself, stay where they are, and a pair that has
// just moved does not move on at once. The loop that takes pairs is
// promised their load until it weighs itself again, so that several loops
// do not all shed to the same one. Only half the gap moves, and only past
// a quarter of a window, so that the loads meet without the pairs going
// back and forth.

// Bits of epPair.mv.
const (
	epMvBulk    = 1 << iota // counted in its loop's bulk pairs
	epMvTransit             // in another loop's inbox, handed over (moveTo)
	epMvPicked              // picked to shed after this batch (considerShed)
)

// Defaults of the load balancing between loops (epBalance).
const (
	epLoadWindow = int64(100 * time.Millisecond)
	epShedBusy   = 500 // per mille of the window: a loop busier sheds...
	epShedGap    = 250 // ...to a loop this much less busy
	epShedAge    = 2   // windows a pair must have lived to be shed
	// epQuietSpell is how long a loop must have gone without a window to
	// tell EpollEngine.Woke's listener that it runs again.
	epQuietSpell = int64(time.Second)
)

// epLoad is a loop's view of the loops' load: its own window, the busy
// clocks it last read, and the pairs it is shedding. Only the loop touches
// it, except promised.
type epLoad struct {
	at       int64   // loop time the window started
	win      uint8   // windows weighed so far (low bits; epPair.born)
	active   int     // pairs that moved bytes in this window (activity)
	seen     []int64 // each loop's busy clock at at
	shedLeft int     // pairs still to pick in this window
	shedTo   *epLoop
	shedding []*epPair // picked in this batch (moveOut)
	// promised is the load, per mille, that other loops are shedding to
	// this one, and when they last did (see promise): it counts as this
	// loop's own until this loop weighs itself again, or for two windows
	// if it does not wake meanwhile.
	promised atomic.Int64
}

// promise adds shed per mille to what other loops shed to w, at loop
// time now: milliseconds in the high bits of promised, per mille in the
// low 16.
func (w *epLoad) promise(now, shed, window int64) {
	for {
		v := w.promised.Load()
		sum := min(promisedAt(v, now, window)+shed, 0xffff)
		if w.promised.CompareAndSwap(v, now/1e6<<16|sum) {
			return
		}
	}
}

// promisedAt is the per mille that promised value v holds at loop time
// now: nothing once two windows have passed since the last promise.
func promisedAt(v, now, window int64) int64 {
	if now/1e6-v>>16 > 2*window/1e6 {
		return 0
	}
	return v & 0xffff
}

// active counts p among the pairs that moved bytes in this window, the
// first time it moves some; called before p.last takes l.now.
func (l *epLoop) active(p *epPair) {
	if p.last < l.load.at {
		l.load.active++
	}
}

// weigh closes l's load window: it reads every loop's busy clock, and if
// l is crowded compared with a loop that may take pairs, it sets how many
// of its active pairs to shed to that loop in the window that starts.
func (l *epLoop) weigh() {
	w := &l.load
	span := l.now - w.at
	active := w.active
	w.at, w.active = l.now, 0
	w.win++
	w.shedLeft, w.shedTo = 0, nil
	w.promised.Store(0)
	l.e.weighs.Add(1)
	if span >= epQuietSpell { // the first run after a quiet spell (EpollEngine.Woke)
		select {
		case l.e.woke <- struct{}{}:
		default:
		}
	}
	first := w.seen == nil
	if first {
		w.seen = make([]int64, len(l.e.loops))
	}
	mine := int64(0)
	var to *epLoop
	least := int64(math.MaxInt64)
	may := l.e.mayTake()
	for i, o := range l.e.loops {
		b := o.busy.Load()
		load := (b - w.seen[i]) * 1000 / max(span, 1)
		w.seen[i] = b
		switch {
		case o == l:
			mine = load
		case i < may:
			if load += promisedAt(o.load.promised.Load(), l.now, l.e.balance.window); load < least {
				to, least = o, load
			}
		}
	}
	if first || to == nil || active == 0 || mine < l.e.balance.shedBusy || mine-least < l.e.balance.shedGap {
		return
	}
	shed := (mine - least) / 2
	w.shedLeft = int((int64(active)*shed + mine - 1) / mine)
	w.shedTo = to
	to.load.promise(l.now, shed, l.e.balance.window)
}

// mayTake is how many loops, the first ones, may take pairs that a busy
// loop sheds: those that accept (Accepting.Spread), which the daemon keeps
// to its Ps.
func (e *EpollEngine) mayTake() int {
	if n := int(e.spread.Load()); n > 0 {
		return n
	}
	return len(e.loops)
}

// considerShed picks p to move to the loop l is shedding to, after the
// batch, if it is an old pair that moved bytes lately and may move.
func (l *epLoop) considerShed(p *epPair) {
	w := &l.load
	if p.mv&(epMvBulk|epMvPicked) != 0 || p.half || p.last < w.at || w.win-p.born < epShedAge {
		return // bulk pairs move as such (turnedBulk)
	}
	p.mv |= epMvPicked
	w.shedding = append(w.shedding, p)
	w.shedLeft--
}

// turnedBulk counts p among l's bulk pairs and marks it to be considered
// for a move after the batch.
func (l *epLoop) turnedBulk(p *epPair) {
	if p.mv&epMvBulk != 0 {
		return
	}
	p.mv |= epMvBulk
	l.bulk.Add(1)
	if len(l.e.loops) > 1 && p.mv&epMvPicked == 0 {
		l.moving = append(l.moving, p)
	}
}

// moveOut hands each pair that turned bulk to the loop with the fewest
// bulk pairs if that one has at least two fewer than l (see turnedBulk),
// and each pair picked to shed to the loop l sheds to (see weigh). Run by
// the loop after its batch, so that no event of the batch is left for a
// pair gone. The bulk counts move with the pair, so one batch does not
// overshoot.
func (l *epLoop) moveOut(may bool) {
	for i, p := range l.moving {
		if to := l.lightest(); may && !p.closed && to != nil {
			l.moveTo(p, to, &l.e.moves)
		}
		l.moving[i] = nil
	}
	l.moving = l.moving[:0]
	w := &l.load
	for i, p := range w.shedding {
		// shedTo is nil for a pair a timeout picked after the last
		// batch, if weigh has reset it since. A pair that stays may be
		// picked again.
		if !may || p.closed || w.shedTo == nil || !l.moveTo(p, w.shedTo, &l.e.sheds) {
			p.mv &^= epMvPicked
		}
		w.shedding[i] = nil
	}
	w.shedding = w.shedding[:0]
}

// lightest is the other loop with the fewest bulk pairs, if it has at least
// two fewer than l.
func (l *epLoop) lightest() *epLoop {
	var to *epLoop
	least := l.bulk.Load() - 1
	for _, o := range l.e.loops {
		if b := o.bulk.Load(); o != l && b < least {
			to, least = o, b
		}
	}
	return to
}

// moveTo detaches p from l and puts it in to's inbox and epoll set, both
// under to's lock: an event of p that to's epoll_wait returns comes from
// the registration, so the intake that follows (it takes the lock) finds p
// in the inbox. A stopping loop takes no pair, nor does any while CloseAll
// runs: p then stays. It reports whether p moved: from then on p is to's,
// and l must not touch it. (CloseAll counts itself in closingAll before it
// posts to any loop, and posts under each loop's lock: a pair put in to's
// inbox before that post is adopted, and closed, by to's next intake.) A
// closing pair stays too: its loop holds what it waits for.
func (l *epLoop) moveTo(p *epPair, to *epLoop, count *atomic.Int64) bool {
	to.mu.Lock()
	defer to.mu.Unlock()
	if to.stop || to.stopped || l.e.closingAll.Load() > 0 || p.failed&epClosing != 0 {
		return false
	}
	l.detach(p)
	if p.mv&epMvBulk != 0 {
		to.bulk.Add(1)
	}
	p.mv |= epMvTransit
	to.inbox = append(to.inbox, p) // to's from here
	err := to.register(int(p.client.fd))
	if err == nil {
		err = to.register(int(p.backend.fd))
	}
	if err != nil { // to finishes the pair it adopts
		to.failed = append(to.failed, epFailed{p, fmt.Errorf("relay: move: %w", err)})
	}
	count.Add(1)
	to.wakeIfParked()
	return true
}

// detach takes p out of l: ready queue, wheel, table, epoll set, counts.
func (l *epLoop) detach(p *epPair) {
	if p.queued {
		l.ready.remove(p)
		p.queued = false
	}
	l.wheel.remove(p)
	l.table[p.client.fd], l.table[p.backend.fd] = nil, nil
	epCtl(l.epfd, unix.EPOLL_CTL_DEL, p.client.fd, 0)
	epCtl(l.epfd, unix.EPOLL_CTL_DEL, p.backend.fd, 0)
	l.live--
	if p.mv&epMvBulk != 0 {
		l.bulk.Add(-1)
	}
	l.pipes.live -= p.pipesHeld()
}

// adoptMoved takes in a pair another loop handed over (moveTo).
func (l *epLoop) adoptMoved(p *epPair) {
	p.mv &^= epMvTransit | epMvPicked
	p.born = l.load.win // its age counts again here
	l.enter(p)          // counted in l.bulk by moveTo, if bulk
	l.pipes.live += p.pipesHeld()
	// The edges the old loop saw are spent: assume every socket ready, and
	// let EAGAIN say otherwise. EPOLLOUT is not in the new set's mask.
	for _, s := range []*epSock{&p.client, &p.backend} {
		s.readable, s.writable, s.outArmed = true, true, false
	}
	if d := p.deadline(); d != 0 {
		l.wheel.add(p, d)
	}
	l.enqueue(p)
}

// enter files p in l's table by both descriptors.
func (l *epLoop) enter(p *epPair) {
	if hi := int(max(p.client.fd, p.backend.fd)); hi >= len(l.table) {
		l.table = append(l.table, make([]*epPair, hi+1-len(l.table)+len(l.table)/2)...)
	}
	l.table[p.client.fd], l.table[p.backend.fd] = p, p
	l.live++
}

// pipesHeld is how many of the pool's pipes p holds.
func (p *epPair) pipesHeld() int {
	n := 0
	if p.in.piped {
		n++
	}
	if p.out.piped {
		n++
	}
	return n
}

// remove takes p out of the queue, keeping the others' order.
func (q *epQueue) remove(p *epPair) {
	for i := range q.n {
		if q.buf[(q.head+i)%len(q.buf)] != p {
			continue
		}
		for j := i; j < q.n-1; j++ {
			q.buf[(q.head+j)%len(q.buf)] = q.buf[(q.head+j+1)%len(q.buf)]
		}
		q.buf[(q.head+q.n-1)%len(q.buf)] = nil
		q.n--
		return
	}
}
