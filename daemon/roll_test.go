package daemon

import (
	"testing"

	"github.com/stickyd/stickyd/admin"
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
