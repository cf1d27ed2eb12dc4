//go:build linux

package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Accepting on the loops. With EpollEngine.Accept, each loop accepts on
// listening sockets of its own (an SO_REUSEPORT group, ListenGroup: the
// kernel gives each new connection to one socket of the group, so one loop
// wakes for it) and runs the handshake and the relay of what it accepted
// itself: accept4, the sniff, the backend's connect(2), the PROXY header
// and every later byte of the pair happen on that loop, with no hand-off
// to another goroutine or thread. See the package documentation, "Accept
// on the loops".

// Acceptor is what a loop calls for the connections it accepts. Its
// methods run on the loop's goroutine and must not block.
type Acceptor interface {
	// Admit takes a connection slot before accept4. False pauses accepting
	// on this loop (clients wait in the listen backlog) until
	// Accepting.Resume.
	Admit() bool
	// Unadmit returns the slot of an Admit that accepted nothing.
	Unadmit()
	// Handle owns s, a client accepted with a slot. on starts pairs on the
	// loop that accepted s, without a hand-off; it is valid during the
	// call only. What cannot be done without waiting goes to a goroutine
	// (EpollEngine.Start then).
	Handle(s *Socket, on Starter)
	// AcceptError is told of an accept4 failure (EMFILE, ENFILE,
	// ENOBUFS...); the loop stops accepting for the pause it returns.
	AcceptError(err error) time.Duration
}

// Starter starts a pair: an Engine, or the loop an Acceptor runs on.
type Starter interface {
	Start(p Pair)
}

// Accepting is a set of listening sockets that the engine's loops accept
// on (EpollEngine.Accept).
type Accepting struct {
	e    *EpollEngine
	a    Acceptor
	lns  []net.Listener
	done chan struct{}
	once sync.Once

	mu  sync.Mutex // Spread and Close
	acc []*epAcc   // listener i's place: in the set of loop acc[i].l
}

// epAcc is one listening socket in one loop's epoll set (level-triggered,
// so that a batch left over is reported again).
type epAcc struct {
	x     *Accepting
	l     *epLoop
	fd    int32          // a dup of the listener's descriptor, ours to close
	local netip.AddrPort // the listening address, unless unspecified
}

// epAccCmd asks a loop to add, remove or re-add (resume) its listeners.
type epAccCmd struct {
	op  int // epAccAdd, epAccRemove, epAccResume
	acc *epAcc
	ack chan struct{}
}

const (
	epAccAdd = iota
	epAccRemove
	epAccResume
)

// epAcceptBatch bounds the connections one loop accepts per event, so that
// one wake-up's handshakes do not delay the pairs it relays; epAcceptTurn
// bounds them per wake-up: past it, with more waiting, the loop yields
// (see yield), as it does past epTurnBudget, so that a flood of new
// connections cannot hold a P either.
const (
	epAcceptBatch = 32
	epAcceptTurn  = 4 * epAcceptBatch
)

// Accept makes the loops accept on lns, listener i on loop i modulo the
// number of loops, calling a for every connection. The Accepting owns lns
// (its Close closes them). Every loop needs a listener of its own: with
// fewer listeners than loops, or a listener that is not TCP, it returns an
// error and lns are left to the caller.
func (e *EpollEngine) Accept(lns []net.Listener, a Acceptor) (*Accepting, error) {
	if len(lns) < len(e.loops) {
		return nil, fmt.Errorf("relay: accept on the loops: %d listeners for %d loops", len(lns), len(e.loops))
	}
	x := &Accepting{e: e, a: a, lns: lns, done: make(chan struct{})}
	for i, ln := range lns {
		fd, local, err := acceptFD(ln)
		if err != nil {
			x.closeFDs()
			return nil, err
		}
		x.acc = append(x.acc, &epAcc{x: x, l: e.loops[i%len(e.loops)], fd: fd, local: local})
	}
	for _, acc := range x.acc {
		acc.l.command(epAccCmd{op: epAccAdd, acc: acc})
	}
	return x, nil
}

// acceptFD returns a non-blocking dup of a TCP listener's descriptor, set
// with the options its accepted sockets inherit (tcpOptions), and its
// address unless unspecified.
func acceptFD(ln net.Listener) (int32, netip.AddrPort, error) {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return -1, netip.AddrPort{}, fmt.Errorf("relay: accept on the loops: %s is not a TCP listener", ln.Addr())
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	dup, errno := -1, syscall.Errno(0)
	cerr := rc.Control(func(fd uintptr) {
		if errno = setTCPOptions(int32(fd)); errno == 0 {
			dup, errno = epFcntl(fd, unix.F_DUPFD_CLOEXEC, 0)
		}
	})
	if err := errors.Join(cerr, errnoErr(errno)); err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("relay: accept on %s: %w", ln.Addr(), err)
	}
	return int32(dup), listenerAddr(tl), nil
}

// Resume makes the loops that paused at Admit accept again. Safe from any
// goroutine; cheap when none is paused.
func (x *Accepting) Resume() {
	for _, l := range x.e.loops {
		if l.accPaused.Load() && l.accPaused.CompareAndSwap(true, false) {
			l.command(epAccCmd{op: epAccResume})
		}
	}
}

// Spread makes the first n loops accept (1 <= n <= the number of loops):
// listener i moves to loop i modulo n, each added to its new loop's set
// before it leaves the old one, so that it is never left unwatched. With
// fewer Ps than loops (adaptive GOMAXPROCS at low load), the loops beyond
// n then get no new pair: they park, and a connection wakes one goroutine,
// not one per loop. It waits for the loops, so it must not be called from
// one.
func (x *Accepting) Spread(n int) {
	n = min(max(n, 1), len(x.e.loops))
	x.e.spread.Store(int32(n))
	x.mu.Lock()
	defer x.mu.Unlock()
	select {
	case <-x.done:
		return
	default:
	}
	for i, acc := range x.acc {
		to := x.e.loops[i%n]
		if acc.l == to {
			continue
		}
		moved := &epAcc{x: x, l: to, fd: acc.fd, local: acc.local}
		if !to.command(epAccCmd{op: epAccAdd, acc: moved}) {
			return // the engine is closing
		}
		ack := make(chan struct{})
		if acc.l.command(epAccCmd{op: epAccRemove, acc: acc, ack: ack}) {
			<-ack
		}
		x.acc[i] = moved
	}
}

// Done is closed when Close has been called.
func (x *Accepting) Done() <-chan struct{} { return x.done }

// Listeners returns the listening sockets (for an upgrade's hand-over).
func (x *Accepting) Listeners() []net.Listener { return x.lns }

// Close stops accepting: once every loop has let go of its listeners, it
// closes them. Connections accepted before keep going. Idempotent. It
// waits for the loops, so it must not be called from one (an Acceptor's
// method or an inline Done).
func (x *Accepting) Close() error {
	var err error
	x.once.Do(func() {
		x.mu.Lock()
		defer x.mu.Unlock()
		var acks []chan struct{}
		for _, acc := range x.acc {
			ack := make(chan struct{})
			if acc.l.command(epAccCmd{op: epAccRemove, acc: acc, ack: ack}) {
				acks = append(acks, ack)
			}
		}
		for _, ack := range acks {
			<-ack
		}
		x.closeFDs()
		for _, ln := range x.lns {
			err = errors.Join(err, ln.Close())
		}
		close(x.done)
	})
	return err
}

func (x *Accepting) closeFDs() {
	for _, acc := range x.acc {
		epClose(acc.fd)
	}
}

// command queues c for the loop and wakes it; false if the loop has
// stopped (its listeners are gone with its epoll set).
func (l *epLoop) command(c epAccCmd) bool {
	l.mu.Lock()
	if l.stopped || l.stop {
		l.mu.Unlock()
		return false
	}
	l.accCmds = append(l.accCmds, c)
	l.mu.Unlock()
	l.wake()
	return true
}

// acceptCommands runs the commands taken by intake.
func (l *epLoop) acceptCommands(cmds []epAccCmd) {
	for _, c := range cmds {
		switch c.op {
		case epAccAdd:
			l.accs = append(l.accs, c.acc)
			if !l.accPaused.Load() {
				l.listen(c.acc)
			}
		case epAccRemove:
			for i, acc := range l.accs {
				if acc == c.acc {
					l.accs = append(l.accs[:i], l.accs[i+1:]...)
					epCtl(l.epfd, unix.EPOLL_CTL_DEL, acc.fd, 0)
					break
				}
			}
			l.accAcks = append(l.accAcks, c.ack)
		case epAccResume:
			for _, acc := range l.accs {
				l.listen(acc)
			}
		}
	}
}

// listen adds acc to the loop's set (EEXIST: it is there already).
func (l *epLoop) listen(acc *epAcc) {
	if e := epCtl(l.epfd, unix.EPOLL_CTL_ADD, acc.fd, unix.EPOLLIN); e != 0 && e != unix.EEXIST {
		d := acc.x.a.AcceptError(os.NewSyscallError("epoll_ctl add listener", e))
		l.pauseAcceptFor(d)
	}
}

// accFor returns the listener of this loop with descriptor fd, or nil.
func (l *epLoop) accFor(fd int32) *epAcc {
	for _, acc := range l.accs {
		if acc.fd == fd {
			return acc
		}
	}
	return nil
}

// accept takes up to epAcceptBatch connections from acc and hands each to
// the Acceptor, which may start its pair on this loop at once. After a
// whole batch the loop waits again before it parks (accMore): the
// listener is level-triggered in the loop's set, but the netpoller watches
// that set edge-triggered and would not report it again for the
// connections left in the backlog.
func (l *epLoop) accept(acc *epAcc) {
	a := acc.x.a
	for range epAcceptBatch {
		if !a.Admit() {
			l.pauseAccept(a)
			return
		}
		var sa unix.RawSockaddrAny
		r, e := epAccept4(acc.fd, &sa)
		switch e {
		case 0:
		case unix.EAGAIN:
			a.Unadmit()
			return
		case unix.ECONNABORTED, unix.EINTR: // gone before it was accepted
			a.Unadmit()
			continue
		default:
			a.Unadmit()
			l.pauseAcceptFor(a.AcceptError(os.NewSyscallError("accept4", e)))
			return
		}
		l.accTurn++
		s := &Socket{fd: int(r), local: acc.local, remote: rawAddrPort(&sa), eng: l.e}
		a.Handle(s, loopStarter{l})
	}
	l.accMore = true
}

// pauseAccept stops this loop's accepting until Accepting.Resume. The
// flag is set before Admit is asked again: a slot freed in between either
// lets this loop go on or finds the flag and resumes it.
func (l *epLoop) pauseAccept(a Acceptor) {
	l.accPaused.Store(true)
	if a.Admit() {
		a.Unadmit()
		if l.accPaused.CompareAndSwap(true, false) {
			l.accMore = true // the listener, level-triggered, is reported at the next wait
			return
		}
		// Resume ran meanwhile (Unadmit's own release may have run it):
		// the listeners are removed below, and its command adds them back.
	}
	l.unlisten()
}

// unlisten takes the loop's listeners out of its set (a pause).
func (l *epLoop) unlisten() {
	for _, acc := range l.accs {
		epCtl(l.epfd, unix.EPOLL_CTL_DEL, acc.fd, 0)
	}
}

// pauseAcceptFor stops this loop's accepting for d (an accept error).
func (l *epLoop) pauseAcceptFor(d time.Duration) {
	l.accPaused.Store(true)
	l.unlisten()
	time.AfterFunc(max(d, time.Millisecond), func() {
		if l.accPaused.CompareAndSwap(true, false) {
			l.command(epAccCmd{op: epAccResume})
		}
	})
}

// loopStarter starts pairs on the loop whose Acceptor call it was given to.
type loopStarter struct{ l *epLoop }

// Start implements Starter: the pair joins the loop at once, on its own
// goroutine: no inbox, no wake-up.
func (s loopStarter) Start(p Pair) { s.l.startHere(p) }

// startHere is EpollEngine.Start on the loop's own goroutine.
func (l *epLoop) startHere(p Pair) {
	ep := newEpPair(&p)
	cfd, chome, cerr := epDetachHome(p.Client)
	bfd, bhome, berr := epDetachHome(p.Backend)
	if err := errors.Join(cerr, berr); err != nil || l.e.closed.Load() {
		l.e.failStart(l, ep, err, cfd, bfd)
		return
	}
	ep.client.fd, ep.backend.fd = int32(cfd), int32(bfd)
	ep.sendFirst(p.Header, p.Pending)
	err := l.adoptFD(cfd, chome)
	if err == nil {
		err = l.adoptFD(bfd, bhome)
	}
	l.adopt(ep)
	if err != nil {
		l.finish(ep, fmt.Errorf("relay: start: %w", err))
	}
}

// ErrWouldBlock is returned by EpollEngine.DialNow when the connection
// cannot be made without waiting.
var ErrWouldBlock = errors.New("relay: the dial would wait")

// DialNow connects like DialTimeout, but only where connect(2) completes
// at once: to a loopback IP literal, whose three-way handshake runs inside
// the call, or to a unix socket. Anything else (another address, a host
// name, a listener whose backlog is full) returns ErrWouldBlock before any
// packet is sent, or with the attempt abandoned. It never waits, so a
// loop's Acceptor may call it. The Socket of a unix connection is for
// Start only (its addresses are not IP ones, and it cannot be converted).
func (e *EpollEngine) DialNow(network, address string) (net.Conn, error) {
	if network == "unix" {
		return e.dialUnixNow(address)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !ap.Addr().Unmap().IsLoopback() || network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, ErrWouldBlock
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if ap.Addr().Is4() != (network != "tcp6") && network != "tcp" {
		return nil, ErrWouldBlock // let DialTimeout say what is wrong
	}
	switch fd, errno := epConnect(ap); errno {
	case 0:
		return &Socket{fd: int(fd), remote: ap, eng: e}, nil
	case unix.EALREADY: // a full backlog: the handshake would wait
		epClose(fd)
		return nil, ErrWouldBlock
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: os.NewSyscallError("connect", errno)}
	}
}

// dialUnixNow connects a non-blocking unix stream socket to path: done
// inside connect(2), or EAGAIN when the listener's backlog is full
// (ErrWouldBlock).
func (e *EpollEngine) dialUnixNow(path string) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: os.NewSyscallError("socket", err)}
	}
	switch err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err {
	case nil:
		return &Socket{fd: fd, eng: e}, nil
	case unix.EAGAIN, unix.EINPROGRESS:
		unix.Close(fd)
		return nil, ErrWouldBlock
	default:
		unix.Close(fd)
		return nil, &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: os.NewSyscallError("connect", err)}
	}
}

// LoopAcceptor is an Engine whose loops accept connections themselves:
// the epoll engine. A server asks for it once:
//
//	if la, ok := eng.(relay.LoopAcceptor); ok {
//		lns, err := relay.ListenGroup(ln, la.Loops())
//		x, err := la.Accept(lns, acceptor)
//	}
type LoopAcceptor interface {
	// Loops is the number of loops: Accept needs a listener for each.
	Loops() int
	// Accept makes the loops accept on lns (see EpollEngine.Accept).
	Accept(lns []net.Listener, a Acceptor) (*Accepting, error)
	// DialNow connects where that takes no wait (see EpollEngine.DialNow).
	DialNow(network, address string) (net.Conn, error)
}

var _ LoopAcceptor = (*EpollEngine)(nil)

// Loops implements LoopAcceptor.
func (e *EpollEngine) Loops() int { return len(e.loops) }

// Moves is how many bulk pairs a crowded loop has handed to the least busy
// one so far (relay/epoll_move.go).
func (e *EpollEngine) Moves() int64 { return e.moves.Load() }

// Woke receives when a loop runs again after a quiet spell: its first
// wake-up after a second or more without one (a loop that runs weighs its
// load every 100 ms; epoll_move.go). The daemon's GOMAXPROCS controller,
// which samples less often at rest, listens to it to wake up with the
// loops, and not with every keep-alive of a mostly idle proxy. It holds
// one value at most: nobody needs to listen.
func (e *EpollEngine) Woke() <-chan struct{} { return e.woke }

// Sheds is how many long-lived pairs busy loops have handed to less busy
// ones so far (relay/epoll_move.go).
func (e *EpollEngine) Sheds() int64 { return e.sheds.Load() }

// Work is what the loops have done so far: the bytes they moved between
// sockets and the connections they accepted, summed over the loops, each
// loop's counted when it parks or yields. Its rate is the proxy's
// throughput, whatever the connections' lengths; the adaptive GOMAXPROCS
// compares it before and during a trial of one P fewer (daemon/procs.go).
func (e *EpollEngine) Work() (bytes, conns int64) {
	for _, l := range e.loops {
		bytes += l.moved.Load()
		conns += l.accepted.Load()
	}
	return bytes, conns
}

// Busy is the time the loops have spent running, summed over the loops:
// wall-clock time from each wake-up (the return of its first epoll_wait,
// which the batch reads the clock at anyway) to the park that follows,
// their system calls included, the Go scheduler's wake-ups and parking
// not. Its rate divided by Loops is how busy the loops are: near 1, they
// are the limit. On cores shared with other work it also counts the time
// the kernel gave a loop's thread's core to another thread.
func (e *EpollEngine) Busy() time.Duration {
	var ns int64
	for _, l := range e.loops {
		ns += l.busy.Load()
	}
	return time.Duration(ns)
}
