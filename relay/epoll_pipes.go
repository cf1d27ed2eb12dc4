//go:build linux

package relay

import (
	"errors"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// errPipeBudget is what epPipePool.get returns when the engine holds
// EpollOptions.MaxPipes pipes already.
var errPipeBudget = errors.New("relay: pipe budget spent")

// epPipe is a non-blocking pipe used to splice one direction of a pair.
type epPipe struct {
	r, w int32
}

// epPipePool is one loop's free list of empty pipes. Only the loop
// goroutine uses it, so it needs no lock. A pair takes a pipe when a
// direction turns bulk and gives it back as soon as the pipe is empty and
// the source is drained, so idle pairs hold none. Every pipe the engine
// holds, pooled or in use, counts against the engine-wide budget (open,
// shared by the loops' pools): past it a bulk direction keeps copying
// through the loop's buffer, so the descriptors a connection can hold stay
// within what the caller counted (EpollOptions.MaxPipes).
type epPipePool struct {
	free   []epPipe
	max    int // pipes kept; the rest are closed on put
	size   int // capacity asked with F_SETPIPE_SZ
	live   int // pipes out of the pool (in use by pairs)
	open   *atomic.Int32
	budget int32 // most pipes the engine may hold
}

// get returns an empty pipe, from the free list or new. It fails when the
// process is out of descriptors; the caller then keeps copying through the
// loop's buffer.
func (pp *epPipePool) get() (epPipe, error) {
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.live++
		return p, nil
	}
	if pp.open.Add(1) > pp.budget {
		pp.open.Add(-1)
		return epPipe{}, errPipeBudget
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		pp.open.Add(-1)
		return epPipe{}, err
	}
	// A bigger pipe halves the splice calls per megabyte; failure (EPERM
	// past pipe-user-pages-soft) leaves the 64 KiB default, which works.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pp.size)
	pp.live++
	return epPipe{r: int32(fds[0]), w: int32(fds[1])}, nil
}

// put takes back a pipe. empty says whether it holds no bytes; a pipe with
// bytes left (its pair failed) is closed, never reused.
func (pp *epPipePool) put(p epPipe, empty bool) {
	pp.live--
	if empty && len(pp.free) < pp.max {
		pp.free = append(pp.free, p)
		return
	}
	p.close()
	pp.open.Add(-1)
}

// closeAll closes the free pipes (at engine Close).
func (pp *epPipePool) closeAll() {
	for _, p := range pp.free {
		p.close()
	}
	pp.open.Add(-int32(len(pp.free)))
	pp.free = nil
}

func (p epPipe) close() {
	unix.Close(int(p.r))
	unix.Close(int(p.w))
}
