//go:build linux

package relay

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EpollEngine relays pairs from a few event loops, so that an idle pair
// costs its two sockets and about 0.2 KB (a 192-byte struct and two table
// slots): no goroutine, no stack, no pipe, no buffer, no Go timer.
//
//	eng, err := relay.NewEpollEngine(relay.EpollOptions{})
//	if err != nil { ... }
//	defer eng.Close()
//	eng.Start(relay.Pair{Client: c, Backend: b, Idle: time.Hour, Done: done})
//
// How it works, and why (measured), is the package documentation's
// "Design of the epoll engine" (doc.go).
type EpollEngine struct {
	base  time.Time // loop clocks count from here
	loops []*epLoop
	next  atomic.Uint32
	pipes atomic.Int32 // splice pipes held by the loops (EpollOptions.MaxPipes)
	moves atomic.Int64 // bulk pairs handed to another loop (epoll_move.go)
	sheds atomic.Int64 // chatty pairs a busy loop handed to another (epoll_move.go)
	// closings counts the survivors closing after a reset (epoll_close.go).
	closings
	// spread is how many loops accept (Accepting.Spread); 0: all. Only
	// those take pairs that a busy loop sheds: the others may have no P.
	spread  atomic.Int32
	balance epBalance     // the load balancing between loops (epoll_move.go)
	weighs  atomic.Int64  // windows the loops have weighed (tests wait for them)
	woke    chan struct{} // Woke: a loop weighed a window (capacity 1)
	// closingAll counts CloseAll calls under way: no pair moves meanwhile.
	closingAll atomic.Int32
	closed     atomic.Bool
	loopsWG    sync.WaitGroup
	notesWG    sync.WaitGroup
}

// The epoll engine makes its own sockets.
var _ SocketMaker = (*EpollEngine)(nil)

// NewEpollEngine starts the loops of an epoll engine. The caller owns the
// engine and must Close it.
func NewEpollEngine(opts EpollOptions) (Engine, error) {
	e := &EpollEngine{base: time.Now(), balance: epBalance{epLoadWindow, epShedBusy, epShedGap}, woke: make(chan struct{}, 1)}
	if opts.balance != nil {
		e.balance = *opts.balance
	}
	for range opts.loops() {
		l, err := newEpLoop(e, opts)
		if err != nil {
			for _, l := range e.loops {
				l.release()
			}
			return nil, fmt.Errorf("relay: new epoll engine: %w", err)
		}
		e.loops = append(e.loops, l)
	}
	for _, l := range e.loops {
		e.loopsWG.Add(1)
		e.notesWG.Add(1)
		go l.run()
		go l.notes.run(&e.notesWG)
	}
	return e, nil
}

// Start implements Engine. It takes the sockets out of p's connections
// (closing the net.Conns) and hands them to a loop; it never blocks on I/O.
// It keeps only p's fields.
func (e *EpollEngine) Start(p Pair) {
	ep := newEpPair(&p)
	// A socket that waited in one of our loops (DialTimeout, a Socket's
	// Read) is re-armed there; the pair goes to the backend's loop, or the
	// client's, or the next one.
	cfd, chome, cerr := epDetachHome(p.Client)
	bfd, bhome, berr := epDetachHome(p.Backend)
	l := e.loopFor(bhome, chome)
	if err := errors.Join(cerr, berr); err != nil || e.closed.Load() {
		e.failStart(l, ep, err, cfd, bfd)
		return
	}
	ep.client.fd, ep.backend.fd = int32(cfd), int32(bfd)
	ep.sendFirst(p.Header, p.Pending)
	// A parked loop adopts the pair at the first event of any of its
	// sockets. It must wake now only for work of its own: bytes still to
	// write, or an idle timeout to arm.
	wake := len(ep.in.pend) > 0 || ep.idle > 0 || ep.firstByte > 0 || ep.hold > 0
	l.mu.Lock()
	l.inbox = append(l.inbox, ep) // ep is the loop's from here
	l.mu.Unlock()
	err := l.adoptFD(cfd, chome)
	if err == nil {
		err = l.adoptFD(bfd, bhome)
	}
	if err != nil { // the loop finishes the pair it has adopted
		l.mu.Lock()
		l.failed = append(l.failed, epFailed{ep, fmt.Errorf("relay: start: %w", err)})
		l.mu.Unlock()
		l.wake()
		return
	}
	if wake {
		l.wakeIfParked()
	}
}

// newEpPair is the state of p's pair before its sockets are adopted.
func newEpPair(p *Pair) *epPair {
	ep := &epPair{idle: int64(p.Idle), linger: int64(p.Linger), done: p.Done}
	if ep.linger == 0 {
		ep.linger = ep.idle
	}
	// The header is not counted in Stats.BytesIn: in.n starts below zero.
	ep.in.n = -int64(len(p.Header))
	ep.out.first = epWatch // until the backend's first byte or end
	if p.RefuseProxy {
		ep.in.first = epWatch // until the client's first bytes are checked
	}
	if p.FirstByte > 0 {
		ep.firstByte = int32(min(max(p.FirstByte.Milliseconds(), 1), math.MaxInt32))
	}
	if p.RefuseProxy && p.HoldReplies > 0 {
		ep.hold = int64(p.HoldReplies) // from the loop's clock at adopt
	}
	return ep
}

// loopFor is the loop a new pair joins: the first of the homes (loops its
// sockets waited in) that is e's, else the next loop.
func (e *EpollEngine) loopFor(homes ...*epLoop) *epLoop {
	for _, l := range homes {
		if l != nil && l.e == e {
			return l
		}
	}
	return e.pick()
}

// sendFirst writes the PROXY header and the client's first bytes to the
// backend with one writev from the caller's slices (joining them would cost
// an allocation per connection). Only what the socket did not take is
// kept, for the loop to write.
func (ep *epPair) sendFirst(header, pending []byte) {
	if len(header)+len(pending) == 0 {
		return
	}
	n, e := epWritev2(ep.backend.fd, header, pending)
	if e != 0 {
		n = 0 // the loop meets the error (or EAGAIN) again
	}
	ep.in.n += int64(n)
	if h := len(header); n < h {
		ep.in.pend = joinFirst(header[n:], pending)
	} else if n-h < len(pending) {
		ep.in.pend = pending[n-h:]
	}
}

// adoptFD registers fd for relaying in l's set: re-armed if it waited
// there (home == l), added otherwise (and removed from the set it waited
// in, whose disabled entry would hold kernel memory until the close).
func (l *epLoop) adoptFD(fd int, home *epLoop) error {
	if home == l {
		return l.rearm(fd)
	}
	if home != nil && home.e == l.e && !l.e.closed.Load() {
		epCtl(home.epfd, unix.EPOLL_CTL_DEL, int32(fd), 0)
	}
	return l.register(fd)
}

// failStart ends a pair that never reached its loop: it closes the
// descriptors detached so far and reports err (or that the engine is
// closed) to Done.
func (e *EpollEngine) failStart(l *epLoop, ep *epPair, err error, fds ...int) {
	if err == nil {
		err = ErrShutdown
	}
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	st := Stats{Err: fmt.Errorf("relay: start: %w", err)}
	switch {
	case ep.done == nil:
	case e.closed.Load(): // misuse: the notifiers may be gone
		go ep.done(st)
	default:
		l.notes.push(ep.done, st)
	}
}

// epDetach returns a dup of c's descriptor, non-blocking, and closes c.
// It returns -1 and an error if c has no usable descriptor. A Socket's own
// descriptor is taken as it is.
func epDetach(c Conn) (int, error) {
	fd, _, err := epDetachHome(c)
	return fd, err
}

// epDetachHome is epDetach that also returns the loop whose epoll set
// already holds the descriptor, disabled (a Socket from DialContext), or nil.
func epDetachHome(c Conn) (int, *epLoop, error) {
	if s, ok := c.(*Socket); ok {
		fd, home, conn := s.take()
		switch {
		case fd >= 0:
			return fd, home, nil
		case conn == nil:
			return -1, nil, fmt.Errorf("detach socket: %w", net.ErrClosed)
		}
		c = conn // converted: detach its *net.TCPConn
	}
	fd, err := epDetachConn(c)
	return fd, nil, err
}

// epDetachConn detaches a net.Conn's socket: it dups the descriptor.
func epDetachConn(c Conn) (int, error) {
	defer c.Close() // the dup keeps the socket open
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("detach socket: %w", err)
	}
	nfd, flags, derr := -1, 0, syscall.Errno(0)
	if err := rc.Control(func(fd uintptr) {
		if nfd, derr = epFcntl(fd, unix.F_DUPFD_CLOEXEC, 0); derr == 0 {
			flags, derr = epFcntl(fd, unix.F_GETFL, 0)
		}
	}); err != nil {
		return -1, fmt.Errorf("detach socket: %w", err)
	}
	if derr != 0 && nfd < 0 {
		return -1, fmt.Errorf("detach socket: dup: %w", derr)
	}
	// Sockets from package net are non-blocking, unless someone called
	// File().Fd() on them; the flag is shared by the dup.
	if derr == 0 && flags&unix.O_NONBLOCK == 0 {
		_, derr = epFcntl(uintptr(nfd), unix.F_SETFL, flags|unix.O_NONBLOCK)
	}
	if derr != 0 {
		epClose(int32(nfd))
		return -1, fmt.Errorf("detach socket: set non-blocking: %w", derr)
	}
	return nfd, nil
}

// CloseAll implements Engine: every pair started before the call is closed
// when it returns (Stats.Err wraps net.ErrClosed); Done calls may still be
// running.
func (e *EpollEngine) CloseAll() {
	if e.closed.Load() {
		return
	}
	e.closingAll.Add(1)
	defer e.closingAll.Add(-1)
	for _, ch := range e.tell(func(l *epLoop) *[]chan struct{} { return &l.closeAll }) {
		<-ch
	}
}

// tell queues a new channel on one of each loop's lists (which picks it,
// under the loop's mutex), wakes the loop, and returns the channels in
// loop order: the loop closes its channel once it has done what that list
// asks (closeAll, pings). A loop that has stopped gets a closed channel: a
// stopping loop closes its pairs anyway, and answers no more.
func (e *EpollEngine) tell(which func(*epLoop) *[]chan struct{}) []chan struct{} {
	chs := make([]chan struct{}, len(e.loops))
	for i, l := range e.loops {
		ch := make(chan struct{})
		l.mu.Lock()
		if l.stopped {
			close(ch)
		} else {
			list := which(l)
			*list = append(*list, ch)
		}
		l.mu.Unlock()
		l.wake()
		chs[i] = ch
	}
	return chs
}

// Ping returns once every event loop has run since the call (taken what
// was handed to it), or, when ctx ends first, an error naming the loops
// that did not: a loop stuck in a callback, say. A loop that has stopped
// counts as answered. It wakes every loop once: a liveness check for a
// watchdog, not for a hot path.
func (e *EpollEngine) Ping(ctx context.Context) error {
	var stuck []int
	for i, ch := range e.tell(func(l *epLoop) *[]chan struct{} { return &l.pings }) {
		select {
		case <-ch:
			continue
		case <-ctx.Done():
		}
		select {
		case <-ch:
		default:
			stuck = append(stuck, i)
		}
	}
	if len(stuck) > 0 {
		return fmt.Errorf("%w: event loops %v of %d did not run within the check", ErrLoopStuck, stuck, len(e.loops))
	}
	return nil
}

// ErrLoopStuck: an event loop did not answer EpollEngine.Ping in time.
var ErrLoopStuck = errors.New("relay: event loop not answering")

// Close implements Engine: it closes the pairs still open, stops the loops,
// waits for every Done to return and releases the engine's descriptors.
// It is idempotent.
func (e *EpollEngine) Close() error {
	if !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	for _, l := range e.loops {
		l.mu.Lock()
		l.stop = true
		l.mu.Unlock()
		l.wake()
	}
	e.loopsWG.Wait()
	for _, l := range e.loops {
		l.release()
		l.notes.stop()
	}
	e.notesWG.Wait()
	return nil
}
