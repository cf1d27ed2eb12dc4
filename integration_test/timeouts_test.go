package integration_test

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// --idle-timeout closes a connection silent both ways, and not one whose
// traffic keeps flowing in one direction only.
func TestIdleTimeout(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag(), "--idle-timeout", "400ms")
	idle := testkit.Dial(t, "127.0.0.1", p.addr)
	defer idle.Close()
	busy := testkit.Dial(t, "127.0.0.2", p.addr)
	defer busy.Close()
	testkit.Greeting(t, idle)
	_, _, br := testkit.Greeting(t, busy)

	closed := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		io.Copy(io.Discard, idle)
		closed <- time.Since(start)
	}()
	// The busy client talks every 100 ms for 1.5 s (well past the timeout).
	for i := range 15 {
		fmt.Fprintf(busy, "tick %d\n", i)
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatalf("busy connection cut after %v: %v", time.Since(start), err)
		}
		time.Sleep(100 * time.Millisecond) // pacing the traffic, not synchronising
	}
	if d := testkit.Await(t, closed, "idle connection never closed"); d < 300*time.Millisecond {
		t.Errorf("idle connection closed after %v, before the 400ms timeout", d)
	}
}
