//go:build linux

package relay

import (
	"fmt"

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

// turnedBulk counts p among l's bulk pairs and marks it to be considered
// for a move after the batch.
func (l *epLoop) turnedBulk(p *epPair) {
	if p.bulk {
		return
	}
	p.bulk = true
	l.bulk.Add(1)
	if len(l.e.loops) > 1 {
		l.moving = append(l.moving, p)
	}
}

// moveOut hands each marked pair to the loop with the fewest bulk pairs if
// that one has at least two fewer than l (see turnedBulk). Run by the loop
// after its batch, so that no event of the batch is left for a pair gone.
// The counts move with the pair, so one batch does not overshoot.
func (l *epLoop) moveOut(may bool) {
	for i, p := range l.moving {
		if to := l.lightest(); may && !p.closed && to != nil {
			l.moveTo(p, to)
		}
		l.moving[i] = nil
	}
	l.moving = l.moving[:0]
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
// runs: p then stays. (CloseAll counts itself in closingAll before it posts
// to any loop, and posts under each loop's lock: a pair put in to's inbox
// before that post is adopted, and closed, by to's next intake.)
func (l *epLoop) moveTo(p *epPair, to *epLoop) {
	to.mu.Lock()
	defer to.mu.Unlock()
	if to.stop || to.stopped || l.e.closingAll.Load() > 0 {
		return
	}
	l.detach(p)
	to.bulk.Add(1)
	p.moved = true
	to.inbox = append(to.inbox, p) // to's from here
	err := to.register(int(p.client.fd))
	if err == nil {
		err = to.register(int(p.backend.fd))
	}
	if err != nil { // to finishes the pair it adopts
		to.failed = append(to.failed, epFailed{p, fmt.Errorf("relay: move: %w", err)})
	}
	l.e.moves.Add(1)
	to.wakeIfParked()
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
	l.bulk.Add(-1)
	l.pipes.live -= p.pipesHeld()
}

// adoptMoved takes in a pair another loop handed over (moveTo).
func (l *epLoop) adoptMoved(p *epPair) {
	p.moved = false
	l.enter(p) // counted in l.bulk by moveTo
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
