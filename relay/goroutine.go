package relay

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// GoroutineEngine relays each pair with two goroutines, one per direction,
// each an io.Copy between the raw sockets so that Go uses splice(2). It is
// simple and fast for busy connections, but an idle pair still holds two
// goroutine stacks and two splice pipes (4 descriptors). See EpollEngine for
// many idle connections.
type GoroutineEngine struct {
	mu    sync.Mutex
	pairs map[*goPair]struct{} // guarded by mu
	closings
}

// NewGoroutineEngine returns an Engine with two goroutines per pair.
func NewGoroutineEngine() *GoroutineEngine {
	return &GoroutineEngine{pairs: make(map[*goPair]struct{})}
}

type goPair struct {
	*Pair
	// idle[0] is client->backend, idle[1] backend->client: set when that
	// direction saw a whole idle period without a byte (or has ended).
	idle [2]atomic.Bool
	// ended counts finished directions; the second one switches the
	// survivor to the linger timeout.
	ended atomic.Int32
	// inEOF is set when the client's FIN is read, before it is passed on.
	inEOF atomic.Bool
	// aborted is set when one direction failed; the other then stops
	// without reporting an error of its own.
	aborted atomic.Bool
	// broken is set when a direction failed (see fail): the pair ends
	// once the other direction has delivered what it can.
	broken atomic.Bool
	// shut[dir] is set when direction dir reached its source's end and
	// half-closed its destination; each is written by its direction only,
	// and read by run once both have returned.
	shut [2]bool
	// start is when the pair started; first is Stats.First, written by
	// the backend -> client direction only.
	start time.Time
	first First
	// stall ends the pair when nothing moves while a write is blocked
	// (goroutine_stall.go).
	stall stallWatch
	// closedAll is set by CloseAll before it closes the pair's sockets:
	// the error that follows is ErrShutdown.
	closedAll atomic.Bool
}

// Start implements Engine.
func (e *GoroutineEngine) Start(p Pair) {
	p.Client, p.Backend = plainConn(p.Client), plainConn(p.Backend)
	gp := &goPair{Pair: &p, start: time.Now()}
	e.mu.Lock()
	e.pairs[gp] = struct{}{}
	e.mu.Unlock()
	go e.run(gp)
}

func (e *GoroutineEngine) run(gp *goPair) {
	var st Stats
	var outErr error
	gp.watchStalls()
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.BytesOut, outErr = gp.copyDir(1, gp.Client, gp.Backend)
	}()
	var inErr error
	if first := len(gp.Header) + len(gp.Pending); first > 0 {
		n, err := gp.Backend.Write(joinFirst(gp.Header, gp.Pending))
		st.BytesIn += int64(max(n-len(gp.Header), 0))
		inErr = err
	}
	if inErr == nil {
		n, err := gp.copyDir(0, gp.Backend, gp.Client)
		st.BytesIn += n
		inErr = err
	} else {
		gp.abort()
	}
	<-done
	st.Err = errors.Join(inErr, outErr)
	if st.Err != nil && gp.closedAll.Load() {
		st.Err = ErrShutdown // not the reads on closed sockets that followed
	}
	st.First = gp.first
	stalled := gp.endStallWatch()
	if stalled && !errors.Is(st.Err, ErrIdle) {
		st.Err = errors.Join(st.Err, ErrIdle)
	}
	if gp.broken.Load() && !stalled { // close(2) with unread bytes would send an RST
		st.BytesIn += gp.deliverRest(0)
		st.BytesOut += gp.deliverRest(1)
		for _, c := range [2]Conn{gp.Client, gp.Backend} {
			if drainNow(c); !tcpClosed(c) {
				e.closeSlowly(c) // the survivor (see closing.go)
			}
		}
	}
	gp.Client.Close()
	gp.Backend.Close()
	e.mu.Lock()
	delete(e.pairs, gp)
	e.mu.Unlock()
	if gp.Done != nil {
		gp.Done(st)
	}
}

// errMore is returned by a step of copyDir that moved what it could and
// has more to do; it never leaves copyDir.
var errMore = errors.New("relay: more")

// copyDir copies src to dst (direction dir) until src ends, then half-closes
// dst. A read deadline implements the idle timeout without wrapping the
// sockets, so io.Copy still splices. The first bytes of each direction may
// be read instead (see watch), to be looked at; the rest is spliced.
func (gp *goPair) copyDir(dir int, dst, src Conn) (int64, error) {
	var total int64
	w := gp.newWatch(dir)
	for {
		if d := w.wait(gp.timeout()); d > 0 {
			src.SetReadDeadline(time.Now().Add(d))
		}
		var n int64
		var err error
		if w != nil {
			n, err = w.step(gp, dst, src)
		} else {
			n, err = io.Copy(dst, src)
		}
		total += n
		if n > 0 {
			gp.idle[dir].Store(false)
		}
		switch {
		case err == errMore:
			if w.over {
				w = nil
				if gp.FirstByte > 0 && gp.timeout() == 0 {
					src.SetReadDeadline(time.Time{}) // the first-byte deadline's
				}
			}
			continue
		case err == nil: // clean EOF
			if dir == 0 {
				gp.inEOF.Store(true)
			}
			dst.CloseWrite()
			gp.shut[dir] = true
			gp.finish(dir)
			if gp.broken.Load() {
				gp.abort() // the other direction only drops bytes (see fail)
			}
			return total, nil
		case gp.aborted.Load():
			return total, nil // the other direction failed and reports why
		case !errors.Is(err, os.ErrDeadlineExceeded):
			gp.fail(dst, src)
			return total, err
		}
		if err := gp.afterDeadline(dir, w, n); err != nil {
			return total, err
		}
	}
}

// afterDeadline says what a read deadline of direction dir, after n bytes
// this period, means: the first-byte timeout (ErrFirstByte), the pair idle
// both ways (ErrIdle), or nil to go on. An error aborts the pair.
func (gp *goPair) afterDeadline(dir int, w *goWatch, n int64) error {
	switch due, moved := w.firstByteDue(gp); {
	case due:
		gp.first = FirstTimeout
		gp.abort()
		return ErrFirstByte
	case moved: // the first-byte deadline woke us, not the idle period
		return nil
	}
	// A whole idle period without a byte this way: the pair is idle
	// once the other direction has had one too (or has ended).
	if n == 0 {
		gp.idle[dir].Store(true)
		if gp.idle[1-dir].Load() {
			gp.abort()
			return ErrIdle
		}
	}
	return nil
}

// timeout is the read deadline for one idle period: Idle, or Linger once
// one direction has ended.
func (gp *goPair) timeout() time.Duration {
	if gp.ended.Load() > 0 && gp.Linger > 0 {
		return gp.Linger
	}
	return gp.Idle
}

// finish marks direction dir ended and moves the other direction's deadline
// to the linger bound.
func (gp *goPair) finish(dir int) {
	gp.idle[dir].Store(true)
	gp.ended.Add(1)
	if d := gp.timeout(); d > 0 {
		other := gp.Backend
		if dir == 1 {
			other = gp.Client
		}
		other.SetReadDeadline(time.Now().Add(d))
	}
}

// fail ends the pair after an error of the direction src -> dst, keeping
// what can still be delivered, as the epoll engine does (see its fail). If
// dst has failed (reset: its TCP state is CLOSE), the bytes dst received
// before stay readable: the other direction reads them on to dst's end
// and delivers them, then aborts, while this one drops what src still
// sends. Otherwise src has failed, after io.Copy delivered what came
// before the error (or it cannot be told, on a Unix socket): the other
// direction, writing to src, stops at once. Either way run drains both
// sockets before it closes them (see drainNow), and closes a socket that
// has not failed only once its peer has what was written to it (see
// closeSlowly).
func (gp *goPair) fail(dst, src Conn) {
	gp.broken.Store(true)
	if !tcpClosed(dst) || gp.ended.Load() > 0 { // or the other has ended already
		gp.abort()
		return
	}
	io.Copy(io.Discard, src) // until src ends, or abort's deadline
}

// deliverRest writes on what direction dir's source still holds when it
// has failed (reset: TCP state CLOSE) and the direction stopped before its
// end, aborted by the other's error: Linux keeps what a reset socket
// received readable, then EOF, so the reads never wait. The writes give
// up once the destination has taken nothing for closingStall. It returns
// the bytes written, and half-closes the destination after them.
func (gp *goPair) deliverRest(dir int) int64 {
	dst, src := gp.Backend, gp.Client
	if dir == 1 {
		dst, src = gp.Client, gp.Backend
	}
	if gp.shut[dir] || !tcpClosed(src) || tcpClosed(dst) {
		return 0
	}
	src.SetReadDeadline(time.Time{}) // abort's
	var total int64
	for {
		dst.SetWriteDeadline(time.Now().Add(closingStall))
		n, err := io.Copy(dst, src)
		total += n
		if n == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
	}
	dst.SetWriteDeadline(time.Time{})
	dst.CloseWrite()
	return total
}

// abort unblocks both directions: their reads fail at once.
func (gp *goPair) abort() {
	gp.aborted.Store(true)
	now := time.Now()
	gp.Client.SetReadDeadline(now)
	gp.Backend.SetReadDeadline(now)
}

// CloseAll implements Engine.
func (e *GoroutineEngine) CloseAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for gp := range e.pairs {
		gp.closedAll.Store(true)
		gp.Client.Close()
		gp.Backend.Close()
	}
}

// Close implements Engine.
func (e *GoroutineEngine) Close() error { return nil }
