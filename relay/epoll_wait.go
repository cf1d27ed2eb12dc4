//go:build linux

package relay

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Waits. A Socket that must wait before it is started (a connect(2) in
// progress, a handshake read that found nothing) waits in one of the
// engine's own epoll sets, registered with EPOLLONESHOT, instead of being
// registered with the Go netpoller: the loop that reports the event hands it
// to the waiting goroutine (a pooled channel), and the registration then
// lies disabled until the next wait or until Start re-arms it as a relayed
// socket (one epoll_ctl MOD). An event for a descriptor the loop knows
// neither as a pair's nor as a waiter's is stale and ignored.

// epWait is a goroutine waiting for one socket's event. They are pooled:
// between uses the channel is empty and the timer stopped.
type epWait struct {
	events chan uint32 // the epoll events; 0: aborted (engine closed, socket closed)
	timer  *time.Timer
}

var epWaits = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &epWait{events: make(chan uint32, 1), timer: t}
}}

var (
	errWaitTimeout = errors.New("relay: wait timed out")
	errWaitDone    = errors.New("relay: wait cancelled")
)

// wait registers fd in the loop's set (op: EPOLL_CTL_ADD the first time,
// MOD after) for mask, once, and returns the events reported. It returns
// errWaitTimeout after timeout (zero: none), errWaitDone when done is
// closed, net.ErrClosed when the engine or the socket closes first. The
// caller keeps fd in every case.
func (l *epLoop) wait(fd int32, op int, mask uint32, done <-chan struct{}, timeout time.Duration) (uint32, error) {
	w := epWaits.Get().(*epWait)
	defer epWaits.Put(w)
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return 0, net.ErrClosed
	}
	l.waits[fd] = w
	l.mu.Unlock()
	if e := epCtl(l.epfd, op, fd, mask|unix.EPOLLONESHOT); e != 0 {
		l.dropWait(fd, w)
		return 0, os.NewSyscallError("epoll_ctl", e)
	}
	var expired <-chan time.Time
	if timeout > 0 {
		w.timer.Reset(timeout)
		defer w.timer.Stop()
		expired = w.timer.C
	}
	var err error
	select {
	case ev := <-w.events:
		if ev != 0 {
			return ev, nil
		}
		return 0, net.ErrClosed
	case <-expired:
		err = errWaitTimeout
	case <-done:
		err = errWaitDone
	}
	if !l.dropWait(fd, w) { // the loop answered meanwhile
		if ev := <-w.events; ev != 0 {
			return ev, nil
		}
		return 0, net.ErrClosed
	}
	return 0, err
}

// dropWait forgets w; false if the loop took it first (and answers it).
func (l *epLoop) dropWait(fd int32, w *epWait) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waits[fd] != w {
		return false
	}
	delete(l.waits, fd)
	return true
}

// abortWait answers the wait on fd, if any, with "closed". Safe from any
// goroutine.
func (l *epLoop) abortWait(fd int32) {
	l.mu.Lock()
	w := l.waits[fd]
	delete(l.waits, fd)
	l.mu.Unlock()
	if w != nil {
		w.events <- 0
	}
}

// waitEvent answers the wait on fd, if any.
func (l *epLoop) waitEvent(fd int32, events uint32) {
	l.mu.Lock()
	w := l.waits[fd]
	delete(l.waits, fd)
	l.mu.Unlock()
	if w != nil {
		if events == 0 { // 0 means "aborted"
			events = unix.EPOLLERR
		}
		w.events <- events
	}
}

// failWaits answers every wait still pending: the engine is closing.
// Called with l.mu held.
func (l *epLoop) failWaits() {
	for fd, w := range l.waits {
		delete(l.waits, fd)
		w.events <- 0
	}
}

// rearm re-enables a socket that waited in this loop's set with the mask
// of a relayed socket.
func (l *epLoop) rearm(fd int) error {
	if e := epCtl(l.epfd, unix.EPOLL_CTL_MOD, int32(fd), epIn); e != 0 {
		return os.NewSyscallError("epoll_ctl mod", e)
	}
	return nil
}

// pick returns the engine's next loop, round-robin.
func (e *EpollEngine) pick() *epLoop {
	return e.loops[e.next.Add(1)%uint32(len(e.loops))]
}
