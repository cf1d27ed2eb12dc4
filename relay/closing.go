//go:build linux

package relay

import (
	"errors"
	"io"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Closing after a reset. When one socket of a pair fails (a backend that
// answers 400 and resets, the request unread), the pair ends once the other
// socket, the survivor, has been written what the failed one sent before
// its reset. But that peer may still be sending (the rest of an upload),
// and close(2) on a socket that receives data afterwards makes the kernel
// answer with an RST, which throws away what is still in the survivor's
// send queue: the end of the 400 reply, unread by a client busy uploading.
// So the survivor is half-closed (a FIN behind its last byte), and what its
// peer sends is read and dropped until the peer has acknowledged all that
// was written to it, ends or fails, or acknowledges nothing for
// closingStall; only then is it closed. This is nginx's lingering close,
// bounded by progress instead of a fixed time. Only TCP needs it: a Unix
// socket's peer keeps what it was sent.

// closingStall is how long a closing survivor waits while its peer
// acknowledges nothing more before it is closed anyway.
const closingStall = 5 * time.Second

// closingPoll is the longest wait between two looks at what the peer has
// acknowledged (the goroutine engine's; the epoll engine looks once a Tick).
const closingPoll = 50 * time.Millisecond

// tcpUnsent is how many bytes written to the TCP socket fd its peer has
// not acknowledged yet (SIOCOUTQ): 0 for another kind of socket or on an
// error.
func tcpUnsent(fd int) int {
	if p, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p != unix.IPPROTO_TCP {
		return 0
	}
	n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0
	}
	return n
}

// closeWatch is what a closing survivor waits for, in both engines: the
// bytes its peer had not acknowledged at the last look, and when (ns, on
// the caller's clock) that count last went down.
type closeWatch struct {
	unsent  int
	since   int64
	stalled bool // over gave up: the peer acknowledged nothing for closingStall
}

// over takes a new look, n bytes unacknowledged at now: it reports whether
// the survivor may be closed (the peer has everything, or has acknowledged
// nothing for closingStall), and otherwise notes any progress.
func (w *closeWatch) over(n int, now int64) bool {
	switch {
	case n == 0:
		return true
	case n < w.unsent:
		w.unsent, w.since = n, now
	case now-w.since >= int64(closingStall):
		w.stalled = true
		return true
	}
	return false
}

// unsent is tcpUnsent for c.
func unsent(c Conn) int {
	n := 0
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { n = tcpUnsent(int(fd)) })
	}
	return n
}

// closings counts an engine's closing survivors, for its Closings
// method (the operator's stickyd_connections_closing and
// stickyd_closes_stalled_total).
type closings struct {
	now     atomic.Int64 // closing now
	stalled atomic.Int64 // closed after closingStall without progress
}

// Closings returns how many connections are closing now (see above) and
// how many were closed because their peer acknowledged nothing for
// closingStall (what it had not acknowledged is lost).
func (c *closings) Closings() (closing, stalled int64) {
	return c.now.Load(), c.stalled.Load()
}

// start counts a closing that begins.
func (c *closings) start() { c.now.Add(1) }

// done counts the end of a closing watched by w.
func (c *closings) done(w *closeWatch) {
	c.now.Add(-1)
	if w != nil && w.stalled {
		c.stalled.Add(1)
	}
}

// ClosingCounter is an engine that counts its closing survivors (both of
// this package's engines).
type ClosingCounter interface {
	Closings() (closing, stalled int64)
}

var (
	_ ClosingCounter = (*EpollEngine)(nil)
	_ ClosingCounter = (*GoroutineEngine)(nil)
)

// closeSlowly is the goroutine engine's closing of a survivor c (see
// above): it returns when c may be closed without losing what c's peer
// has not yet received. It returns at once if the peer has everything.
func (cs *closings) closeSlowly(c Conn) {
	last := unsent(c)
	if last == 0 {
		return
	}
	c.CloseWrite()
	start := time.Now()
	w, wait := closeWatch{unsent: last}, time.Millisecond
	cs.start()
	defer cs.done(&w)
	for {
		c.SetReadDeadline(time.Now().Add(wait))
		if _, err := io.Copy(io.Discard, c); !errors.Is(err, os.ErrDeadlineExceeded) {
			return // the peer ended or failed, or CloseAll closed c
		}
		if w.over(unsent(c), int64(time.Since(start))) {
			return
		}
		wait = min(2*wait, closingPoll)
	}
}
