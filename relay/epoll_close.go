//go:build linux

package relay

import (
	"golang.org/x/sys/unix"
)

// The epoll engine's closing after a reset (see closing.go). A pair whose
// flows have both ended, one socket having failed, closes at once unless
// its survivor's peer still has bytes to receive and may still send: then
// it is closing. Its survivor is shut for writing and stays in the epoll
// set; each event on it, and each Tick of the wheel, reads and drops what
// the peer sent and looks at what the peer has acknowledged (closing).

// epClosing is a bit of epPair.failed beside the sockets' bits: the pair is
// closing. Kept there so that the pair keeps its size class.
const epClosing = 1 << 2

// survivor is the socket of p that has not failed, if only one has.
func (p *epPair) survivor() *epSock {
	switch p.failed &^ epClosing {
	case epClientBit:
		return &p.backend
	case epBackendBit:
		return &p.client
	}
	return nil
}

// end closes p, whose flows have both ended: at once, or once its
// survivor's peer has what was written to it (see closing).
func (l *epLoop) end(p *epPair) {
	s := p.survivor()
	if s == nil || s.hup { // no survivor, or its peer sends no more (FIN or error)
		l.finish(p, nil)
		return
	}
	n := tcpUnsent(int(s.fd))
	if n == 0 {
		l.finish(p, nil)
		return
	}
	epShutdownWrite(s.fd)
	p.failed |= epClosing
	if l.closeWaits == nil {
		l.closeWaits = make(map[*epPair]*closeWatch)
	}
	l.closeWaits[p] = &closeWatch{unsent: n, since: l.now}
	l.e.closings.start()
	l.wheel.remove(p)
	l.wheel.add(p, l.now+l.wheel.tick)
}

// closing serves a closing pair on an event or its tick: it reads and
// drops what the survivor's peer sent (epBudget bytes a turn, as pump),
// and finishes p once the peer has everything, has ended or failed, or
// has acknowledged nothing for closingStall.
func (l *epLoop) closing(p *epPair) {
	s := p.survivor()
	if s == nil { // it failed too (an event's EPOLLERR): nothing to wait for
		l.finish(p, nil)
		return
	}
	for budget := epBudget; s.readable; {
		if budget <= 0 {
			l.enqueue(p)
			break
		}
		n, e := epRead(s.fd, l.buf)
		switch {
		case e == unix.EAGAIN:
			s.readable = false
		case e != 0 || n == 0:
			l.finish(p, nil)
			return
		default:
			budget -= n
			l.turn += n
		}
	}
	if l.closeWaits[p].over(tcpUnsent(int(s.fd)), l.now) {
		l.finish(p, nil)
	}
}
