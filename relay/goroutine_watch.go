package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// goWatch is the start of one direction of a goroutine pair: its first
// bytes are read with read(2) into a small buffer instead of being spliced,
// to be looked at (the client's for a PROXY signature under
// Pair.RefuseProxy, the backend's for Stats.First), and the backend ->
// client direction implements Pair.FirstByte. Once the first bytes are
// written on, io.Copy splices the rest. A nil *goWatch watches nothing.
type goWatch struct {
	dir  int
	have int       // dir 0: bytes held while they could start a signature
	fbAt time.Time // dir 1: the first-byte deadline; zero: none
	over bool      // the watch is done: splice from now on
	buf  [512]byte
}

// newWatch returns the watch of direction dir, or nil.
func (gp *goPair) newWatch(dir int) *goWatch {
	switch {
	case dir == 1:
		w := &goWatch{dir: 1}
		if gp.FirstByte > 0 {
			w.fbAt = gp.start.Add(gp.FirstByte)
		}
		return w
	case gp.RefuseProxy:
		return &goWatch{dir: 0}
	}
	return nil
}

// wait is the read deadline for the next step: d (the idle period, 0 for
// none), or less to wake at the first-byte deadline.
func (w *goWatch) wait(d time.Duration) time.Duration {
	if w == nil || w.fbAt.IsZero() {
		return d
	}
	left := max(time.Until(w.fbAt), time.Millisecond)
	if d == 0 || left < d {
		return left
	}
	return d
}

// firstByteDue is called when a read hit its deadline. due: the
// first-byte timeout has expired, counted from the client's last byte (or
// the start). moved: the first-byte deadline woke the read, but the client
// spoke meanwhile, so the deadline moves on. Neither: the idle period was
// due.
func (w *goWatch) firstByteDue(gp *goPair) (due, moved bool) {
	if w == nil || w.fbAt.IsZero() || time.Now().Before(w.fbAt) {
		return false, false
	}
	quiet := clientQuiet(gp.Client, gp.start)
	if quiet >= gp.FirstByte {
		return true, false
	}
	w.fbAt = time.Now().Add(gp.FirstByte - quiet)
	return false, true
}

// step reads once and writes what it read on, like one round of
// io.Copy: nil at the end of the stream, errMore to go on.
func (w *goWatch) step(gp *goPair, dst, src Conn) (int64, error) {
	if w.dir == 0 {
		return w.stepClient(dst, src)
	}
	m, err := src.Read(w.buf[:])
	if m > 0 {
		gp.first = firstOf(w.buf[:m])
		w.over, w.fbAt = true, time.Time{}
		n, werr := dst.Write(w.buf[:m])
		if werr != nil {
			return int64(n), werr
		}
		return int64(n), errMore
	}
	switch {
	case err == nil:
		return 0, errMore
	case err == io.EOF:
		gp.backendEnded()
		w.over = true
		return 0, nil
	case !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) && !gp.aborted.Load():
		gp.backendEnded() // a reset
	}
	return 0, err
}

// stepClient reads the client's first bytes and refuses a PROXY signature;
// bytes that could still start one are held until more come.
func (w *goWatch) stepClient(dst, src Conn) (int64, error) {
	m, err := src.Read(w.buf[w.have:16])
	w.have += m
	maybe, certain := proxySignature(w.buf[:w.have])
	switch {
	case certain || maybe && err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		return 0, fmt.Errorf("relay: client: %w", ErrProxyHeader)
	case maybe && err != nil:
		return 0, err // a deadline: the idle logic decides
	case maybe:
		return 0, errMore
	case w.have > 0:
		w.over = true
		n, werr := dst.Write(w.buf[:w.have])
		if werr != nil {
			return int64(n), werr
		}
		return int64(n), errMore
	case err == nil:
		return 0, errMore
	case err == io.EOF:
		w.over = true
		return 0, nil
	}
	return 0, err
}

// backendEnded records FirstClosed when the backend ended before its
// first byte, the client's side open and quiet for at most
// EarlyCloseWindow.
func (gp *goPair) backendEnded() {
	if !gp.inEOF.Load() && clientQuiet(gp.Client, gp.start) <= EarlyCloseWindow {
		gp.first = FirstClosed
	}
}
