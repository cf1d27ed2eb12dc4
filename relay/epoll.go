//go:build linux

package relay

import (
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
// costs its two sockets and about 0.2 KB (a 176-byte struct and two table
// slots): no goroutine, no stack, no pipe, no buffer, no Go timer.
//
//	eng, err := relay.NewEpollEngine(relay.EpollOptions{})
//	if err != nil { ... }
//	defer eng.Close()
//	eng.Start(relay.Pair{Client: c, Backend: b, Idle: time.Hour, Done: done})
//
// # Design
//
// Descriptors. Start takes each socket out of the Go runtime. A Socket
// (socket_linux.go: accepted with accept4, or dialed by DialTimeout) is a
// bare descriptor already, taken as it is; if it waited in one of our loops
// (epoll_wait.go) its disabled registration there is re-armed, and the pair
// goes to that loop. From a net.Conn, Start dups the descriptor
// (F_DUPFD_CLOEXEC, under RawConn.Control) and closes the net.Conn, which
// also removes the original from the Go netpoller. The dup shares the socket
// and its O_NONBLOCK flag; it is the only descriptor left, owned by the
// engine until the pair finishes. (Keeping the net.Conn and using its
// descriptor raw would leave the socket registered with the Go netpoller
// too, which would then wake for every event of ours, and would keep the
// net.Conn and its poll descriptor alive per pair.)
//
// Loops. There are EpollOptions.Loops loops (default GOMAXPROCS), each a
// goroutine with its own epoll set; Start spreads pairs round-robin (one
// loop measured the same CPU per connection as two, on 2 cores). Each
// socket is registered once, edge-triggered, for EPOLLIN and EPOLLRDHUP,
// and keeps readable/writable flags that events set and EAGAIN clears. A
// socket is assumed writable until a write returns EAGAIN; only then is
// EPOLLOUT added (one epoll_ctl, for good), so short connections never wake
// the loop just to learn that a fresh socket is writable.
//
// Parking. The loop does not block an OS thread in epoll_wait: a goroutine
// blocked in a syscall makes the runtime hand its P to another thread, and
// with LockOSThread every wake-up is a futex hand-off between threads (the
// futex/nanosleep storm seen in an earlier design). Instead the epoll
// descriptor itself is given to the Go netpoller (os.NewFile of a
// non-blocking epoll fd, readable while it has events), and the loop runs
// inside RawConn.Read: epoll_wait with timeout 0 until nothing is left, then
// it returns false and parks like any goroutine reading a socket. Timer
// wake-ups are the file's read deadline. Start writes Pair.Header and
// Pair.Pending to the backend itself (one write(2), from the caller's
// goroutine), puts the pair in the loop's inbox, registers the sockets, and
// writes the loop's eventfd only if the loop is parked and has work of its
// own for the pair (bytes the backend did not take, an idle timeout to
// arm); the loop adopts the inbox after every epoll_wait, so any event of a
// pair finds it adopted. CloseAll, Close and a failed registration also go
// through the inbox and the eventfd. All the loop's system calls are
// non-blocking and made with RawSyscall (see epoll_sys.go).
//
// Data. A direction starts in buffer mode: read(2) into the loop's shared
// buffer (BufferSize, 64 KiB) and write(2) straight to the destination; a
// pair holds no buffer. Only when the destination takes less than was read
// are the rest copied to a heap slice, held until written. A read that fills
// the buffer means a bulk transfer: the direction takes a pipe from the
// loop's pool and splices (socket -> pipe -> socket, SPLICE_F_MOVE) until the
// source is drained and the pipe empty, then returns the pipe. The engine
// holds at most EpollOptions.MaxPipes pipes, pooled or in use; a direction
// that finds none stays in buffer mode. Like
// HAProxy's splice-auto, small exchanges cost one read and one write, and
// bulk costs no copy through user space. The pipe is only refilled when
// empty, so EAGAIN from splice means the source is drained, never that the
// pipe is full. A short read(2) means the socket is drained too (epoll
// reports every later arrival as a new edge), except after EPOLLRDHUP,
// where the loop reads on to the EOF.
//
// Back-pressure. While a direction has bytes pending (heap slice or pipe)
// and its destination is not writable, its source is not read; EPOLLOUT on
// the destination resumes it. Bytes are never dropped or reordered:
// Pair.Header and Pair.Pending, joined, are the first pending slice of the
// client -> backend direction (one write for both).
//
// Fairness. One pair moves at most 1 MiB per direction per service, then
// waits its turn in the loop's ready queue (FIFO: round-robin among the
// pairs with more to move). A loop moves at most 2 MiB per wake-up
// (epTurnBudget): past that, events of pairs in bulk (splice) mode only
// queue them, while pairs in buffer mode (handshakes, short exchanges) are
// still served at once, and once the batch is done the loop yields: it
// writes its own eventfd and parks, so the Go scheduler runs the accept
// loop, the handshakes and anything the netpoller has before the loop
// takes its next turn. Without that, 60 downloads kept both loops busy in
// their RawConn.Read callbacks, the accept loop ran only when sysmon
// preempted them, and new connections took 80-160 ms (p50) on 2 cores.
//
// Ends. EOF on a source, once its bytes are flushed, shuts the destination
// down for writing (half-close) and switches the pair's timeout to Linger;
// the other direction keeps flowing. When both directions have ended the
// sockets are closed. A read, write or socket error (ECONNRESET, EPIPE,
// EPOLLERR) closes both at once, with Stats.Err set.
//
// Timeouts. Each loop has a timing wheel (Tick resolution, 1024 slots).
// Moving bytes only stores the loop's clock in the pair; the wheel checks
// the real deadline when it reaches the pair's slot and re-files it if it
// was active, so the cost is one wheel operation per timeout period. The
// loop's deadline is set for the next non-empty slot only.
//
// Done. Callbacks run on one goroutine per loop, in close order, after both
// sockets are closed: a slow callback delays the Done calls of its loop,
// never I/O. The loop hands them over once per batch of events. With
// EpollOptions.InlineDone they run on the loop itself after each batch
// instead: no faster at saturation, where batches are large, but below it
// every connection closes in a batch of its own and the hand-off cost a
// goroutine wake-up each (measured at 1000 connections/s on 2 cores: about
// a tenth of the CPU per connection).
type EpollEngine struct {
	base    time.Time // loop clocks count from here
	loops   []*epLoop
	next    atomic.Uint32
	pipes   atomic.Int32 // splice pipes held by the loops (EpollOptions.MaxPipes)
	closed  atomic.Bool
	loopsWG sync.WaitGroup
	notesWG sync.WaitGroup
}

// NewEpollEngine starts the loops of an epoll engine. The caller owns the
// engine and must Close it.
func NewEpollEngine(opts EpollOptions) (Engine, error) {
	e := &EpollEngine{base: time.Now()}
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
	// A socket that waited in one of our loops (DialTimeout, a Socket's
	// Read) is re-armed there; the pair goes to the backend's loop, or the
	// client's, or the next one.
	cfd, chome, cerr := epDetachHome(p.Client)
	bfd, bhome, berr := epDetachHome(p.Backend)
	l := bhome
	if l == nil || l.e != e {
		l = chome
	}
	if l == nil || l.e != e {
		l = e.pick()
	}
	if err := errors.Join(cerr, berr); err != nil || e.closed.Load() {
		e.failStart(l, ep, err, cfd, bfd)
		return
	}
	ep.client.fd, ep.backend.fd = int32(cfd), int32(bfd)
	if len(p.Header)+len(p.Pending) > 0 { // the PROXY header and the client's first bytes
		// One writev from the caller's slices: joining them would cost an
		// allocation per connection. Only what the socket did not take is
		// kept, for the loop to write.
		n, e := epWritev2(ep.backend.fd, p.Header, p.Pending)
		if e != 0 {
			n = 0 // the loop meets the error (or EAGAIN) again
		}
		ep.in.n += int64(n)
		if h := len(p.Header); n < h {
			ep.in.pend = joinFirst(p.Header[n:], p.Pending)
		} else if n-h < len(p.Pending) {
			ep.in.pend = p.Pending[n-h:]
		}
	}
	// A parked loop adopts the pair at the first event of any of its
	// sockets. It must wake now only for work of its own: bytes still to
	// write, or an idle timeout to arm.
	wake := len(ep.in.pend) > 0 || ep.idle > 0 || ep.firstByte > 0
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
		err = epErrCloseAll
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
	var waits []chan struct{}
	for _, l := range e.loops {
		ch := make(chan struct{})
		l.mu.Lock()
		if !l.stopped { // a stopping loop closes its pairs anyway
			l.closeAll = append(l.closeAll, ch)
			waits = append(waits, ch)
		}
		l.mu.Unlock()
		l.wake()
	}
	for _, ch := range waits {
		<-ch
	}
}

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
