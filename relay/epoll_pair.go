//go:build linux

package relay

import (
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// epSock is one socket of a pair as its loop sees it. The readiness flags
// follow edge-triggered epoll: an event sets them, and only an EAGAIN (or a
// short read, see fill) clears them.
type epSock struct {
	fd       int32
	readable bool
	writable bool // assumed at first; EAGAIN clears it
	hup      bool // the peer's FIN (or an error) was seen: read on until EOF
	outArmed bool // EPOLLOUT is in the socket's event mask
}

// epFlow is one direction of a pair. Between events it holds nothing unless
// bytes are pending: pend (a heap copy, made only when the destination was
// full) or a pipe with inPipe bytes (splice mode, only while a bulk transfer
// is under way).
type epFlow struct {
	pend   []byte
	n      int64 // bytes written to the destination
	pipe   epPipe
	inPipe int32
	piped  bool // pipe is held: read with splice(2), not into the buffer
	eof    bool // the source reached end of stream
	shut   bool // eof, flushed, and the destination's write side is shut
	// first watches the start of the flow. in: epWatch while the client's
	// first bytes must be checked for a PROXY signature (Pair.RefuseProxy).
	// out: epWatch until the backend's first byte or end, then a First;
	// epGone is added when a backend error ends the watch (see finish).
	first uint8
}

// Bits of epFlow.first besides a First value.
const (
	epWatch = 0x80
	epGone  = 0x40
)

func (f *epFlow) pending() bool { return len(f.pend) > 0 || f.inPipe > 0 }

// epPair is a relayed pair, owned by one loop after Start.
type epPair struct {
	client, backend epSock
	in, out         epFlow // in: client -> backend, out: backend -> client
	idle, linger    int64  // timeouts in ns; 0: none
	last            int64  // loop time a byte last moved
	done            func(Stats)

	// timing wheel links (epWheel)
	tprev, tnext *epPair
	tick         int64

	firstByte int32 // Pair.FirstByte in milliseconds; 0: none
	// The first socket error (see fail), Stats.Err at the end: its
	// socket, system call and errno. Kept in a few bytes, as failed (a
	// bit per socket that failed), so that the pair keeps its size class.
	errSide uint8 // epClientBit or epBackendBit; 0: none
	errOp   epOp
	errno   uint16
	// hold is the loop time until which the backend's bytes wait for the
	// client's check (Pair.HoldReplies; a duration until adopt); 0: none.
	hold    int64
	partial bool // the client's bytes so far could start a PROXY signature
	half    bool // one flow has ended: linger applies
	closed  bool
	queued  bool  // in the loop's ready list
	filed   bool  // in the wheel
	failed  uint8 // epClientBit | epBackendBit: sockets that failed (see fail); epClosing
	mv      uint8 // epMvBulk | epMvTransit | epMvPicked (see epoll_move.go)
	born    uint8 // its loop's load window when it arrived there (low bits)
}

// Bits of epPair.failed and values of errSide.
const (
	epClientBit = 1 << iota
	epBackendBit
)

// bit is s's bit in p.failed.
func (p *epPair) bit(s *epSock) uint8 {
	if s == &p.client {
		return epClientBit
	}
	return epBackendBit
}

// isFailed reports whether a socket error was seen on s: nothing more is
// written to it, and it is read to its end (see fail).
func (p *epPair) isFailed(s *epSock) bool { return p.failed&p.bit(s) != 0 }

// deadline is the loop time at which p times out, or 0 for never.
func (p *epPair) deadline() int64 {
	d, _ := p.deadlineWhy()
	return d
}

// deadlineWhy is deadline and the error of that timeout: ErrIdle, or
// ErrFirstByte while the backend has sent nothing and Pair.FirstByte is
// the shorter bound. Before the backend's first byte only client bytes
// move p.last, so the first-byte bound runs from the client's last byte.
func (p *epPair) deadlineWhy() (int64, error) {
	period, why := p.idle, ErrIdle
	if p.half {
		period = p.linger
	}
	if p.firstByte > 0 && p.out.first&epWatch != 0 {
		if fb := int64(p.firstByte) * int64(time.Millisecond); period == 0 || fb < period {
			period, why = fb, ErrFirstByte
		}
	}
	d := int64(0)
	if period != 0 {
		d = p.last + period
	}
	if p.holding() && (d == 0 || p.hold < d) {
		return p.hold, errHoldOver
	}
	return d, why
}

// errHoldOver is deadlineWhy's reason when Pair.HoldReplies ends first:
// not an error, the backend's bytes may go.
var errHoldOver = errors.New("relay: hold over")

// holding reports whether the backend's bytes wait for the client's check
// (Pair.HoldReplies): until it passes, or the hold's end.
func (p *epPair) holding() bool { return p.hold != 0 && p.in.first&epWatch != 0 }

// name says which side s is, for errors.
func (p *epPair) name(s *epSock) string {
	if s == &p.client {
		return "client"
	}
	return "backend"
}

// opErr is the error of op on s. An error on the backend before its first
// byte is noted for Stats.First (see finish).
func (p *epPair) opErr(op string, s *epSock, err error) error {
	if s == &p.backend && p.out.first&epWatch != 0 {
		p.out.first |= epGone
	}
	return fmt.Errorf("relay: %s %s: %w", op, p.name(s), err)
}

// epOp is the system call a socket error came from.
type epOp uint8

// The values of epOp, and their names in errors.
const (
	epOpSocket epOp = iota // SO_ERROR after EPOLLERR
	epOpRead
	epOpWrite
	epOpSpliceFrom
	epOpSpliceTo
)

var epOpNames = [...]string{"socket error on", "read", "write", "splice from", "splice to"}

// epSockErr is an error of a read, write or splice on one socket of a
// pair: that socket has failed, but what it received before may still be
// read and delivered (see fail).
type epSockErr struct {
	s     *epSock
	op    epOp
	errno syscall.Errno
	err   error // opErr's
}

func (e *epSockErr) Error() string { return e.err.Error() }
func (e *epSockErr) Unwrap() error { return e.err }

// sockErr is opErr for an I/O error on s, which fail handles.
func (p *epPair) sockErr(op epOp, s *epSock, e syscall.Errno) *epSockErr {
	return &epSockErr{s, op, e, p.opErr(epOpNames[op], s, e)}
}

// firstSockErr is the first socket error of p (see fail), or nil.
func (p *epPair) firstSockErr() error {
	s := &p.client
	switch p.errSide {
	case 0:
		return nil
	case epBackendBit:
		s = &p.backend
	}
	return fmt.Errorf("relay: %s %s: %w", epOpNames[p.errOp], p.name(s), syscall.Errno(p.errno))
}

// undelivered is how many bytes the socket that failed first (errSide)
// had received that p has not delivered: still queued in the socket
// (SIOCINQ), in the pipe or the pending copy of the flow out of it, and
// that socket; 0 and nil without a failed socket. The bytes a socket
// received before its error are delivered (see fail), so at the end they
// are 0 unless something cut the flow short: a timeout, CloseAll, the
// other side failing too. Called on the failure path only (an ioctl).
func (p *epPair) undelivered() (int, *epSock) {
	s, f := &p.client, &p.in
	switch p.errSide {
	case 0:
		return 0, nil
	case epBackendBit:
		s, f = &p.backend, &p.out
	}
	n, err := unix.IoctlGetInt(int(s.fd), unix.SIOCINQ)
	if err != nil {
		n = 0
	}
	return n + int(f.inPipe) + len(f.pend), s
}

// backendEnded settles the out flow's watch when the backend ends (EOF
// or error) before its first byte: FirstClosed while the client's side is
// open and the end came within EarlyCloseWindow of the client's last byte
// (or the start), FirstNone otherwise.
func (l *epLoop) backendEnded(p *epPair) {
	if p.out.first&epWatch == 0 {
		return
	}
	p.out.first = uint8(FirstNone)
	if !p.in.eof && l.now-p.last <= int64(EarlyCloseWindow) {
		p.out.first = uint8(FirstClosed)
	}
}

// checkClient looks at the client's first bytes for a PROXY signature
// (Pair.RefuseProxy) without taking them from the socket (MSG_PEEK). It
// returns true once they may be relayed (no signature, or the end of the
// stream); false with a nil error while they could still become one:
// they stay in the socket, and the next arrival is a new edge.
func (l *epLoop) checkClient(p *epPair, f *epFlow, src *epSock) (bool, error) {
	n, e := epPeek(src.fd, l.buf[:min(len(l.buf), 16)])
	switch {
	case e == unix.EAGAIN:
		src.readable = false
		return false, nil
	case e != 0:
		return false, p.sockErr(epOpRead, src, e)
	}
	maybe, certain := proxySignature(l.buf[:n])
	switch {
	case certain || maybe && src.hup: // a FIN: the rest will never come
		return false, fmt.Errorf("relay: client: %w", ErrProxyHeader)
	case maybe:
		src.readable = false
		p.partial = true
		return false, nil
	}
	f.first = 0
	return true, nil
}

// epBudget caps the bytes one flow moves per service call, so that one
// fast pair cannot starve the others of its loop.
const epBudget = 1 << 20

// service moves whatever both flows of p can move now, then half-closes
// ended flows and ends p when both have ended (see end), or finishes it
// on an error that is not a socket's. A closing pair is served by closing.
func (l *epLoop) service(p *epPair) {
	if p.failed&epClosing != 0 {
		l.closing(p)
		return
	}
	moreIn, err := l.pump(p, &p.in, &p.client, &p.backend)
	moreOut := false
	if err == nil && !(p.holding() && l.now < p.hold) {
		moreOut, err = l.pump(p, &p.out, &p.backend, &p.client)
	}
	if err != nil {
		l.finish(p, err)
		return
	}
	l.endFlow(p, &p.in, &p.out, &p.backend)
	l.endFlow(p, &p.out, &p.in, &p.client)
	if p.in.shut && p.out.shut {
		l.end(p)
		return
	}
	if l.load.shedLeft > 0 {
		l.considerShed(p)
	}
	if moreIn || moreOut {
		l.enqueue(p)
	}
}

// pump moves bytes of f from src to dst until src is drained, dst is full,
// src ended, or epBudget bytes were read; more reports the last case. A
// socket error on src or dst does not stop it: fail records it, and the
// bytes that can still be delivered go on (see fail).
func (l *epLoop) pump(p *epPair, f *epFlow, src, dst *epSock) (more bool, err error) {
	budget := epBudget
	for {
		n := 0
		switch {
		case p.isFailed(dst):
			return l.discard(p, src, budget)
		case f.pending():
			if !dst.writable {
				return false, nil
			}
			err = l.flush(p, f, dst)
		case f.eof || !src.readable || !dst.writable:
			return false, nil
		case budget <= 0:
			return true, nil
		default:
			n, err = l.fill(p, f, src, dst)
		}
		if se, ok := err.(*epSockErr); ok { // not errors.As: no allocation per turn
			l.fail(p, se)
		} else if err != nil {
			return false, err
		}
		budget -= n
		l.turn += n
	}
}

// fail records that socket e.s failed (a reset, say) and keeps what can
// still be delivered. Linux keeps the bytes a socket received before the
// error readable (then EOF, or the error once more), so the flow out of
// the socket reads on to its end and flushes, and the pair ends with the
// error only then: a backend that answers 400 and closes with the request
// unread sends an RST right behind its answer, which must still reach the
// client. The flow into the socket has nowhere to go: its pending bytes
// are dropped, and its source is read and dropped too (see discard). A
// second error on the socket comes from reading it: its stream has ended.
func (l *epLoop) fail(p *epPair, e *epSockErr) {
	s := e.s
	into, from, peer := &p.out, &p.in, &p.backend // s is the client
	if s == &p.backend {
		into, from, peer = &p.in, &p.out, &p.client
	}
	if p.isFailed(s) {
		from.eof = true
		return
	}
	p.failed |= p.bit(s)
	s.readable, s.hup = true, true
	if p.errSide == 0 {
		p.errSide, p.errOp, p.errno = p.bit(s), e.op, uint16(e.errno)
	}
	l.fromSplice(into) // a pipe with bytes left is closed, not pooled
	into.pend, into.shut = nil, true
	peer.readable = true // its event may not have come yet: discard reads it to EAGAIN
	l.startLinger(p)
}

// discard reads and drops what src sends to a failed socket, so
// that src's receive queue is empty when the pair closes: close(2) with
// unread bytes sends an RST, and the RST would throw away what is still
// queued for src, the failed socket's last bytes.
func (l *epLoop) discard(p *epPair, src *epSock, budget int) (bool, error) {
	for src.readable && !p.isFailed(src) {
		if budget <= 0 {
			return true, nil
		}
		n, e := epRead(src.fd, l.buf)
		switch {
		case e == unix.EAGAIN || n == 0:
			src.readable = false
		case e != 0:
			return false, p.sockErr(epOpRead, src, e)
		}
		budget -= n
		l.turn += n
	}
	return false, nil
}

// fill reads once from src. In buffer mode the bytes go through the loop's
// buffer straight to dst, and what dst does not take is copied to f.pend;
// a read that fills the buffer turns f to splice mode. In splice mode the
// bytes go into f's pipe, for the caller to flush.
func (l *epLoop) fill(p *epPair, f *epFlow, src, dst *epSock) (int, error) {
	if f.piped {
		return l.spliceIn(p, f, src)
	}
	if f.first&epWatch != 0 && f == &p.in {
		if ok, err := l.checkClient(p, f, src); !ok {
			return 0, err
		}
	}
	n, e := epRead(src.fd, l.buf)
	switch {
	case e == unix.EAGAIN:
		src.readable = false
		return 0, nil
	case e != 0:
		return 0, p.sockErr(epOpRead, src, e)
	case n == 0:
		f.eof = true
		if f == &p.out {
			l.backendEnded(p)
		}
		return 0, nil
	}
	if f.first&epWatch != 0 { // the backend's first bytes (in's watch is over)
		f.first = uint8(firstOf(l.buf[:n]))
	}
	// A short read emptied the socket: epoll reports every later arrival
	// as a new edge, so there is no need to read on to EAGAIN. Not after a
	// FIN was seen, though: its edge may be spent already.
	if n < len(l.buf) && !src.hup {
		src.readable = false
	}
	m, err := l.write(p, f, dst, l.buf[:n])
	if err != nil {
		return n, err
	}
	if m < n {
		f.pend = append([]byte(nil), l.buf[m:n]...)
	}
	if n == len(l.buf) && l.toSplice(f) {
		l.turnedBulk(p)
	}
	return n, nil
}

// spliceIn fills f's empty pipe from src. Only an empty pipe is filled, so
// EAGAIN surely means src is drained (not that the pipe is full); the pipe
// then goes back to the pool.
func (l *epLoop) spliceIn(p *epPair, f *epFlow, src *epSock) (int, error) {
	n, e := epSplice(src.fd, f.pipe.w, l.pipes.size)
	switch {
	case e == unix.EAGAIN:
		src.readable = false
		l.fromSplice(f)
		return 0, nil
	case e != 0:
		return 0, p.sockErr(epOpSpliceFrom, src, e)
	case n == 0:
		f.eof = true
		l.fromSplice(f)
		return 0, nil
	}
	f.inPipe = int32(n)
	return n, nil
}

// flush writes f's pending bytes (pend first, then the pipe) to dst once.
func (l *epLoop) flush(p *epPair, f *epFlow, dst *epSock) error {
	if len(f.pend) > 0 {
		m, err := l.write(p, f, dst, f.pend)
		f.pend = f.pend[m:]
		if len(f.pend) == 0 {
			f.pend = nil // drop the heap copy (or the caller's Pending)
		}
		return err
	}
	n, e := epSplice(f.pipe.r, dst.fd, int(f.inPipe))
	switch {
	case e == unix.EAGAIN:
		return l.blocked(p, dst)
	case e != 0:
		return p.sockErr(epOpSpliceTo, dst, e)
	case n == 0: // the pipe is empty: the count is wrong, do not spin
		return p.opErr("splice to", dst, io.ErrNoProgress)
	}
	f.inPipe -= int32(n)
	f.n += int64(n)
	l.active(p)
	p.last = l.now
	return nil
}

// write writes b to dst once and returns how much it took; EAGAIN clears
// dst.writable and is not an error.
func (l *epLoop) write(p *epPair, f *epFlow, dst *epSock, b []byte) (int, error) {
	m, e := epWrite(dst.fd, b)
	switch {
	case e == unix.EAGAIN:
		return 0, l.blocked(p, dst)
	case e != 0:
		return 0, p.sockErr(epOpWrite, dst, e)
	}
	f.n += int64(m)
	l.active(p)
	p.last = l.now
	return m, nil
}

// blocked records that dst is full. Sockets are registered without
// EPOLLOUT (a fresh socket is writable, and its registration would only
// cost the loop a wake-up), so the first time dst fills up EPOLLOUT is
// added; being edge-triggered, the change reports dst at once if it has
// drained meanwhile.
func (l *epLoop) blocked(p *epPair, dst *epSock) error {
	dst.writable = false
	if dst.outArmed {
		return nil
	}
	dst.outArmed = true
	if e := epCtl(l.epfd, unix.EPOLL_CTL_MOD, dst.fd, epIn|unix.EPOLLOUT); e != 0 {
		return p.opErr("epoll_ctl mod", dst, e)
	}
	return nil
}

// toSplice gives f a pipe for a bulk transfer and reports whether it got
// one. Without one (no descriptors left) f stays in buffer mode, slower but
// correct.
func (l *epLoop) toSplice(f *epFlow) bool {
	pp, err := l.pipes.get()
	if err != nil {
		return false
	}
	f.pipe, f.piped = pp, true
	return true
}

// fromSplice returns f's pipe to the pool; f is back in buffer mode.
func (l *epLoop) fromSplice(f *epFlow) {
	if f.piped {
		l.pipes.put(f.pipe, f.inPipe == 0)
		f.pipe, f.piped, f.inPipe = epPipe{}, false, 0
	}
}

// endFlow half-closes dst once f has ended and is flushed. When the other
// flow has ended too, the pair is about to close, and close(2) sends the
// FIN anyway, so the shutdown(2) is skipped. The first flow to end starts
// the linger period.
func (l *epLoop) endFlow(p *epPair, f, other *epFlow, dst *epSock) {
	if !f.eof || f.shut || f.pending() {
		return
	}
	f.shut = true
	l.fromSplice(f)
	if other.shut {
		return
	}
	epShutdownWrite(dst.fd) // ENOTCONN: the peer is gone; the other flow will say so
	l.startLinger(p)
}

// startLinger switches p's timeout to Linger, once: one flow has ended.
func (l *epLoop) startLinger(p *epPair) {
	if !p.half {
		p.half = true
		l.wheel.remove(p)
		if d := p.deadline(); d != 0 {
			l.wheel.add(p, d)
		}
	}
}
