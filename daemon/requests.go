package daemon

import (
	"context"
	"sync"
)

// requests holds the runs of a task asked for (a rolling restart of the
// workers, a reload) and those who wait for their outcome, of type T.
// Requests that arrive while one runs are folded into one more run after
// it, so that a change made meanwhile is taken; each waiter gets the
// outcome of a run that began after its request.
type requests[T any] struct {
	mu       sync.Mutex
	pending  bool     // a run is asked for and not yet begun
	waiters  []chan T // of that run
	closed   bool     // the runner has returned: requests are answered at once
	wake     chan struct{}
	stopping T // the outcome of a run that will not begin
}

// newRequests returns an empty queue whose runs, once it is closed, end
// as stopping.
func newRequests[T any](stopping T) *requests[T] {
	return &requests[T]{wake: make(chan struct{}, 1), stopping: stopping}
}

// request asks for a run; reply, when not nil, gets its outcome.
func (q *requests[T]) request(reply chan T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		if reply != nil {
			reply <- q.stopping
		}
		return
	}
	q.pending = true
	if reply != nil {
		q.waiters = append(q.waiters, reply)
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take begins the pending run: it returns its waiters, and whether one was
// pending at all.
func (q *requests[T]) take() ([]chan T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	select { // a wake-up sent for this run is spent by it
	case <-q.wake:
	default:
	}
	w, ok := q.waiters, q.pending
	q.waiters, q.pending = nil, false
	return w, ok
}

// close answers the waiters of a run that will not begin, and every later
// request, with the stopping outcome.
func (q *requests[T]) close() {
	q.mu.Lock()
	q.closed = true
	w := q.waiters
	q.waiters, q.pending = nil, false
	q.mu.Unlock()
	for _, c := range w {
		c <- q.stopping
	}
}

// ask asks for a run and returns where its outcome will be sent.
func (q *requests[T]) ask() <-chan T {
	reply := make(chan T, 1)
	q.request(reply)
	return reply
}

// serve runs the requested runs with run, one at a time, each outcome to
// its waiters, until ctx ends (at shutdown); then it answers the runs
// still asked for, and any later, with the stopping outcome.
func (q *requests[T]) serve(ctx context.Context, run func(context.Context) T) {
	defer q.close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		}
		waiters, ok := q.take()
		if !ok {
			continue
		}
		out := q.stopping
		if ctx.Err() == nil { // else stopping began as this run was asked for
			out = run(ctx)
		}
		for _, c := range waiters {
			c <- out
		}
		if ctx.Err() != nil {
			return
		}
	}
}
