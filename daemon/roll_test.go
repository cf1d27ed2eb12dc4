package daemon

import (
	"context"
	"testing"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/internal/testkit"
)

// Requests made before a run begins share it; those made during it share
// the next; every waiter is answered once, and at close those of a run
// that will not begin, and any later, are told that stickyd stops.
func TestRollRequestsFold(t *testing.T) {
	q := newRollRequests()
	if _, ok := q.take(); ok {
		t.Fatal("a run pending before any request")
	}
	a, b := make(chan admin.RollOutcome, 1), make(chan admin.RollOutcome, 1)
	q.request(a)
	q.request(nil) // SIGUSR1
	q.request(b)
	if len(q.wake) != 1 {
		t.Fatalf("%d wake-ups buffered, want 1", len(q.wake))
	}
	w, ok := q.take()
	if !ok || len(w) != 2 || w[0] != a || w[1] != b {
		t.Fatalf("take = %v %v, want a and b", w, ok)
	}
	if len(q.wake) != 0 {
		t.Fatal("the run's wake-up was not spent by it")
	}
	// During the run: folded into one more.
	c, d := make(chan admin.RollOutcome, 1), make(chan admin.RollOutcome, 1)
	q.request(c)
	q.request(d)
	if w, ok := q.take(); !ok || len(w) != 2 {
		t.Fatalf("the next run's waiters: %v %v", w, ok)
	}
	if _, ok := q.take(); ok {
		t.Fatal("a third run for two requests during the first")
	}
	// A signal alone asks for a run too.
	q.request(nil)
	if w, ok := q.take(); !ok || len(w) != 0 {
		t.Fatalf("SIGUSR1 alone: %v %v", w, ok)
	}
	e, f := make(chan admin.RollOutcome, 1), make(chan admin.RollOutcome, 1)
	q.request(e)
	q.close()
	q.request(f)
	for name, ch := range map[string]chan admin.RollOutcome{"pending": e, "after close": f} {
		select {
		case out := <-ch:
			if out.Result != admin.RollStopped {
				t.Errorf("%s: %+v, want stopped", name, out)
			}
		default:
			t.Errorf("%s: not answered", name)
		}
	}
}

// serve runs what is asked, each outcome to its waiters, and once its
// context ends answers every request with the stopping outcome.
func TestRequestsServe(t *testing.T) {
	q := newRequests("stopping")
	ctx, cancel := context.WithCancel(context.Background())
	runs := make(chan string, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.serve(ctx, func(context.Context) string { runs <- "ran"; return "ok" })
	}()
	if out := testkit.Await(t, q.ask(), "no outcome"); out != "ok" {
		t.Errorf("outcome %q, want ok", out)
	}
	testkit.Await(t, runs, "no run")
	cancel()
	testkit.Await(t, done, "serve did not return after its context ended")
	if out := testkit.Await(t, q.ask(), "no outcome after the stop"); out != "stopping" {
		t.Errorf("after the stop: %q, want stopping", out)
	}
	if len(runs) != 0 {
		t.Error("a run after the stop")
	}
}
