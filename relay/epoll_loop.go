//go:build linux

package relay

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// epEvents is the size of one epoll_wait batch.
const epEvents = 256

// epLoop is one event loop: a goroutine, an epoll set, the pairs filed in
// it, a read buffer and a pipe pool. Everything below mu is touched only by
// the loop goroutine.
type epLoop struct {
	e    *EpollEngine
	epfd int
	file *os.File        // epfd, registered with the Go netpoller
	rc   syscall.RawConn // of file: the loop parks in rc.Read
	efd  int             // eventfd: wakes the loop for commands

	parked    atomic.Bool // the loop has nothing to do: Start must wake it
	accPaused atomic.Bool // accepting paused: at Admit's limit, or after an accept error
	mu        sync.Mutex  // guards the fields up to the blank line
	inbox     []*epPair   // started, registered, not yet adopted
	failed    []epFailed  // started, but a registration failed
	closeAll  []chan struct{}
	pings     []chan struct{}   // closed by the loop's next intake (EpollEngine.Ping)
	waits     map[int32]*epWait // sockets waiting before Start (see epoll_wait.go)
	accCmds   []epAccCmd        // for the listeners (see epoll_accept.go)
	stop      bool              // Close asked the loop to end
	stopped   bool              // the loop took stop: no closeAll will be answered

	events     []unix.EpollEvent
	buf        []byte
	pipes      epPipePool
	wheel      epWheel
	table      []*epPair // by descriptor
	ready      epQueue   // pairs with more to move, served round-robin
	turn       int       // bytes moved since the loop last woke (epTurnBudget)
	spareI     []*epPair // inbox's other half
	pollFn     func(uintptr) bool
	now        int64 // loop time of the current batch: ns since the engine started
	armed      int64 // tick the file's read deadline is set for; 0: none
	live       int
	notes      *epNotifier
	ended      []epNote // Done calls of this batch, for notify
	inlineDone bool     // EpollOptions.InlineDone
	accs       []*epAcc // listeners this loop accepts on
	accAcks    []chan struct{}
	accMore    bool                    // a listener may have connections left: wait again before parking
	accTurn    int                     // connections accepted since the loop woke (epAcceptTurn)
	moving     []*epPair               // pairs that turned bulk in this batch (moveOut)
	bulk       atomic.Int32            // pairs of this loop that turned bulk (read by the others)
	busy       atomic.Int64            // ns spent running, wake-up to park (EpollEngine.Busy)
	moved      atomic.Int64            // bytes moved (EpollEngine.Work)
	accepted   atomic.Int64            // connections accepted (EpollEngine.Work)
	load       epLoad                  // this loop's busy share and what it sheds (epoll_move.go)
	closeWaits map[*epPair]*closeWatch // closing pairs (epoll_close.go); nil until the first
}

type epFailed struct {
	p   *epPair
	err error
}

func newEpLoop(e *EpollEngine, opts EpollOptions) (*epLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	// Non-blocking, so that os.NewFile hands it to the Go netpoller: an
	// epoll descriptor is readable while it has events.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("set epoll non-blocking: %w", err)
	}
	l := &epLoop{
		e:          e,
		epfd:       epfd,
		file:       os.NewFile(uintptr(epfd), "epoll"),
		events:     make([]unix.EpollEvent, epEvents),
		buf:        make([]byte, opts.bufferSize()),
		pipes:      epPipePool{max: opts.poolPipes(), size: opts.pipeSize(), open: &e.pipes, budget: opts.maxPipes()},
		wheel:      epWheel{tick: int64(opts.tick())},
		notes:      newEpNotifier(),
		inlineDone: opts.InlineDone,
		efd:        -1,
		waits:      make(map[int32]*epWait),
	}
	l.pollFn = l.poll
	if l.rc, err = l.file.SyscallConn(); err != nil {
		l.file.Close()
		return nil, err
	}
	if l.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		l.file.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := l.register(l.efd); err != nil {
		l.release()
		return nil, err
	}
	return l, nil
}

// epIn is the event mask a socket is registered with: edge-triggered
// reading and the peer's FIN. EPOLLOUT is added on demand (see blocked).
const epIn = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET

// register adds fd to the loop's epoll set with epIn. It is safe from any
// goroutine.
func (l *epLoop) register(fd int) error {
	if e := epCtl(l.epfd, unix.EPOLL_CTL_ADD, int32(fd), epIn); e != 0 {
		return fmt.Errorf("epoll_ctl add: %w", e)
	}
	return nil
}

// wake makes the loop run its intake soon. Safe from any goroutine. The
// eventfd is edge-triggered: every write is an event, so the loop never
// reads it (the counter would need 2^64 writes to fill).
func (l *epLoop) wake() {
	one := [8]byte{1}
	epWrite(int32(l.efd), one[:])
}

// wakeIfParked wakes the loop if it is parked; a running loop runs its
// intake before it parks again.
func (l *epLoop) wakeIfParked() {
	if l.parked.Load() && l.parked.CompareAndSwap(true, false) {
		l.wake()
	}
}

// release closes the loop's descriptors once its goroutine has ended.
func (l *epLoop) release() {
	l.file.Close()
	if l.efd >= 0 {
		unix.Close(l.efd)
	}
	l.pipes.closeAll()
}

// run is the loop goroutine. It parks in the Go netpoller, like any
// goroutine reading a socket, until the epoll set has events or the next
// timer tick is due, so it never blocks an OS thread in epoll_wait.
func (l *epLoop) run() {
	defer l.e.loopsWG.Done()
	for {
		err := l.rc.Read(l.pollFn)
		switch {
		case err == nil: // poll returned true: stop
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			l.file.SetReadDeadline(time.Time{})
			l.armed = 0
		default: // the file was closed under us: cannot happen before stop
			return
		}
	}
}

// poll runs batches of events until there is nothing left to do, then
// arms the timer and returns false to park. It returns true to stop.
func (l *epLoop) poll(uintptr) bool {
	l.parked.Store(false)
	l.turn, l.accTurn = 0, 0
	woke := int64(-1) // the first batch's clock: no reading of its own
	defer func() {
		l.busy.Add(int64(time.Since(l.e.base)) - woke)
		if l.turn > 0 {
			l.moved.Add(int64(l.turn))
		}
		if l.accTurn > 0 {
			l.accepted.Add(int64(l.accTurn))
		}
	}()
	for {
		n, e := epWaitNow(l.epfd, l.events)
		if e != 0 {
			if e != unix.EINTR {
				panic(fmt.Sprintf("relay: epoll_wait: %v", e)) // EBADF, EFAULT, EINVAL: a bug
			}
			n = 0
		}
		l.now = int64(time.Since(l.e.base))
		if woke < 0 {
			woke = l.now
		}
		if l.now-l.load.at >= l.e.balance.window {
			l.weigh()
		}
		closeAll, stop := l.intake()
		l.accMore = false
		for i := range n {
			l.event(&l.events[i])
		}
		for _, ack := range l.accAcks { // after the batch: no stale event is left
			close(ack)
		}
		l.accAcks = l.accAcks[:0]
		l.runReady()
		if len(l.moving) > 0 || len(l.load.shedding) > 0 {
			l.moveOut(len(closeAll) == 0 && !stop) // closing them all: none moves
		}
		l.wheel.advance(l.now, l.expire)
		if len(closeAll) > 0 || stop {
			l.closePairs()
			for _, ch := range closeAll {
				close(ch)
			}
		}
		if len(l.ended) > 0 {
			l.ended = l.notify(l.ended)
		}
		if stop {
			return true
		}
		if l.ready.n > 0 && l.turn >= epTurnBudget || l.accMore && l.accTurn >= epAcceptTurn {
			return l.yield()
		}
		if n == len(l.events) || l.ready.n > 0 || l.accMore || !l.park() {
			continue
		}
		l.arm()
		return false
	}
}

// epTurnBudget bounds the bytes a loop moves per wake-up. Past it, the
// pairs with more to move wait in the ready queue while the loop yields
// (see yield), so that bulk transfers cannot hold a P for long: the accept
// loop, the handshakes and the Done calls run in between, as HAProxy
// bounds the work of one wake-up.
const epTurnBudget = 2 << 20

// yield parks the loop with work left: it wakes itself through the eventfd
// first, so the netpoller reports its epoll set at once, and returns false
// to park. The P then runs what is runnable, and what the netpoller has
// (a new connection on the listener, say), before the loop again.
func (l *epLoop) yield() bool {
	l.wake()
	l.arm()
	return false
}

// notify runs the Done calls of a batch, in close order: on the loop
// (EpollOptions.InlineDone) or, in one hand-off and wake-up per batch, on
// the loop's notifier goroutine. It returns batch emptied for reuse.
func (l *epLoop) notify(batch []epNote) []epNote {
	if !l.inlineDone {
		return l.notes.pushAll(batch)
	}
	for _, n := range batch {
		n.fn(n.st)
	}
	clear(batch)
	return batch[:0]
}

// park sets the parked flag, unless Start or a command has queued work
// meanwhile. With the flag set, Start wakes the loop through the eventfd;
// both sides set their flag, then look at the other's (seq-cst atomics and
// the mutex), so a new pair is never left unseen.
func (l *epLoop) park() bool {
	l.parked.Store(true)
	l.mu.Lock()
	work := len(l.inbox) > 0 || len(l.failed) > 0 || len(l.closeAll) > 0 || len(l.accCmds) > 0 || len(l.pings) > 0 || l.stop
	l.mu.Unlock()
	if work {
		l.parked.Store(false)
	}
	return !work
}

// intake adopts the pairs Start handed over, fails those whose registration
// failed, and collects commands. Run after epoll_wait: any event of a pair
// comes from a registration done after the pair was put in the inbox.
func (l *epLoop) intake() (closeAll []chan struct{}, stop bool) {
	l.mu.Lock()
	inbox, failed, accCmds, pings := l.inbox, l.failed, l.accCmds, l.pings
	closeAll, stop = l.closeAll, l.stop
	l.inbox, l.failed, l.closeAll, l.accCmds, l.pings = l.spareI[:0], nil, nil, nil, nil
	l.stopped = stop
	if stop {
		l.failWaits()
	}
	l.mu.Unlock()
	for _, ch := range pings {
		close(ch)
	}
	for _, p := range inbox {
		l.adopt(p)
	}
	clear(inbox)
	l.spareI = inbox
	for _, f := range failed {
		l.finish(f.p, f.err)
	}
	l.acceptCommands(accCmds)
	return closeAll, stop
}

func (l *epLoop) adopt(p *epPair) {
	if p.mv&epMvTransit != 0 {
		l.adoptMoved(p)
		return
	}
	l.enter(p)
	p.last = l.now
	p.born = l.load.win
	if p.hold != 0 {
		p.hold += l.now
	}
	if d := p.deadline(); d != 0 {
		l.wheel.add(p, d)
	}
	p.client.writable, p.backend.writable = true, true
	if p.in.pending() { // Pair.Pending: the backend is writable
		l.service(p)
	}
}

// event records what epoll says of one socket and services its pair.
func (l *epLoop) event(ev *unix.EpollEvent) {
	fd := int(ev.Fd)
	if fd == l.efd {
		return // its commands were taken by intake
	}
	if fd >= len(l.table) || l.table[fd] == nil {
		if acc := l.accFor(ev.Fd); acc != nil {
			l.accept(acc)
			return
		}
		l.waitEvent(ev.Fd, ev.Events)
		return
	}
	p := l.table[fd]
	s := &p.client
	if fd == int(p.backend.fd) {
		s = &p.backend
	}
	// SO_ERROR also clears the error: reads of s then return what it
	// received before the error, then EOF, which fail has it deliver.
	if ev.Events&unix.EPOLLERR != 0 && !p.isFailed(s) {
		if e, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); e != 0 {
			l.fail(p, p.sockErr(epOpSocket, s, syscall.Errno(e)))
		}
	}
	if ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.hup = true
	}
	if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
	if ev.Events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.writable = true
	}
	switch {
	case p.queued: // served in its turn
	case l.turn >= epTurnBudget && (p.in.piped || p.out.piped):
		l.enqueue(p) // bulk waits its turn; short exchanges are served now
	default:
		l.service(p)
	}
}

// enqueue puts p at the end of the ready queue, once.
func (l *epLoop) enqueue(p *epPair) {
	if !p.queued {
		p.queued = true
		l.ready.push(p)
	}
}

// runReady services the queued pairs in turn, each once at most, until
// the wake-up's budget is spent; the rest keep their place at the head of
// the queue. It serves one pair at least, so that the queue moves however
// much the batch's events took.
func (l *epLoop) runReady() {
	for i := range l.ready.n {
		if i > 0 && l.turn >= epTurnBudget {
			return
		}
		p := l.ready.pop()
		p.queued = false
		if !p.closed {
			l.service(p)
		}
	}
}

// epQueue is a FIFO of pairs, a ring that grows as needed.
type epQueue struct {
	buf  []*epPair
	head int
	n    int
}

func (q *epQueue) push(p *epPair) {
	if q.n == len(q.buf) {
		grown := make([]*epPair, max(16, 2*len(q.buf)))
		for i := range q.n {
			grown[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = grown, 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = p
	q.n++
}

func (q *epQueue) pop() *epPair {
	p := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	return p
}

// expire is called by the wheel when p's tick has come: p times out, or is
// filed again if it moved bytes meanwhile.
func (l *epLoop) expire(p *epPair) {
	if p.failed&epClosing != 0 {
		if l.closing(p); !p.closed {
			l.wheel.add(p, l.now+l.wheel.tick)
		}
		return
	}
	d, why := p.deadlineWhy()
	switch {
	case d == 0:
	case d > l.now:
		l.wheel.add(p, d)
	case why == errHoldOver && p.partial: // mid-signature all along: no time to wait
		l.finish(p, fmt.Errorf("relay: client: %w", ErrProxyHeader))
	case why == errHoldOver: // the backend's bytes may go now
		p.hold = 0
		l.service(p)
		if d := p.deadline(); d != 0 && !p.closed {
			l.wheel.add(p, d)
		}
	default:
		if why == ErrFirstByte {
			p.out.first = uint8(FirstTimeout)
		}
		l.finish(p, why)
	}
}

// arm sets the file's read deadline to the next tick that has pairs, so
// that the parked loop wakes for it. An engine whose pairs have no timeout
// never wakes on its own.
func (l *epLoop) arm() {
	t, ok := l.wheel.next()
	if !ok {
		t = 0
	}
	if t == l.armed {
		return
	}
	l.armed = t
	if !ok {
		l.file.SetReadDeadline(time.Time{})
		return
	}
	l.file.SetReadDeadline(l.e.base.Add(time.Duration(t * l.wheel.tick)))
}

// finish closes both sockets of p and queues its Done. Pipes with bytes
// left are closed, not pooled. A socket error seen before (see fail) is
// the first error of Stats.Err; err, if any, is joined to it (as the
// goroutine engine joins its directions' errors): a reset whose reply
// was then cut by the half-close timeout says both, and how many of the
// reply's bytes were left undelivered (see undelivered).
func (l *epLoop) finish(p *epPair, err error) {
	if p.closed {
		return
	}
	if first := p.firstSockErr(); first != nil {
		var left error
		if n, s := p.undelivered(); n > 0 {
			left = fmt.Errorf("relay: %d bytes the %s sent before that were not delivered", n, p.name(s))
		}
		err = errors.Join(first, err, left) // and what ended the pair after it, if anything (a timeout, CloseAll)
	}
	p.closed = true
	if p.failed&epClosing != 0 {
		l.e.closings.done(l.closeWaits[p])
		delete(l.closeWaits, p)
	}
	l.wheel.remove(p)
	l.fromSplice(&p.in)
	l.fromSplice(&p.out)
	p.in.pend, p.out.pend = nil, nil
	l.table[p.client.fd], l.table[p.backend.fd] = nil, nil
	epClose(p.client.fd) // also removes it from the epoll set
	epClose(p.backend.fd)
	l.live--
	if p.mv&epMvBulk != 0 {
		l.bulk.Add(-1)
	}
	if p.out.first&epGone != 0 {
		l.backendEnded(p)
	}
	if p.done != nil {
		first := First(p.out.first &^ epWatch) // still watching: FirstNone
		l.ended = append(l.ended, epNote{p.done, Stats{BytesIn: max(p.in.n, 0), BytesOut: p.out.n, Err: err, First: first}})
		p.done = nil
	}
}

// closePairs finishes every pair of the loop (CloseAll, Close).
func (l *epLoop) closePairs() {
	for fd, p := range l.table {
		if p != nil && fd == int(p.client.fd) {
			l.finish(p, ErrShutdown)
		}
	}
}

// epNotifier runs Done callbacks on a goroutine of their own, one per loop,
// in the order the pairs closed, so a slow callback never stalls I/O.
type epNotifier struct {
	mu   sync.Mutex
	q    []epNote // guarded by mu
	kick chan struct{}
}

type epNote struct {
	fn func(Stats)
	st Stats
}

func newEpNotifier() *epNotifier {
	return &epNotifier{kick: make(chan struct{}, 1)}
}

// push queues one callback. Safe from any goroutine before stop.
func (n *epNotifier) push(fn func(Stats), st Stats) {
	n.mu.Lock()
	n.q = append(n.q, epNote{fn, st})
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// pushAll queues a batch of callbacks, in order, and returns batch emptied
// for reuse. Safe from any goroutine before stop.
func (n *epNotifier) pushAll(batch []epNote) []epNote {
	n.mu.Lock()
	n.q = append(n.q, batch...)
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
	clear(batch)
	return batch[:0]
}

// run calls queued callbacks until stop is called, then drains the queue.
func (n *epNotifier) run(wg *sync.WaitGroup) {
	defer wg.Done()
	var batch []epNote
	for range n.kick {
		batch = n.drain(batch)
	}
	n.drain(batch)
}

func (n *epNotifier) drain(batch []epNote) []epNote {
	n.mu.Lock()
	batch, n.q = n.q, batch[:0]
	n.mu.Unlock()
	for _, note := range batch {
		note.fn(note.st)
	}
	clear(batch)
	return batch[:0]
}

// stop ends run once the queue is drained. No push may follow.
func (n *epNotifier) stop() { close(n.kick) }
