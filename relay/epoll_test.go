//go:build linux

package relay

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stickyd/stickyd/internal/testkit"
)

// TestEpollIdleCost holds 1000 idle pairs open and checks what they cost the
// epoll engine: no goroutine, no pipe, and exactly the two sockets per pair
// (the test process also holds the client's and the backend's ends: four
// descriptors per pair in all). It logs the costs of both engines.
func TestEpollIdleCost(t *testing.T) {
	const pairs = 1000
	for _, ec := range engines {
		t.Run(ec.name, func(t *testing.T) {
			eng, err := ec.new()
			if err != nil {
				t.Skip(err)
			}
			c := measureIdle(t, newRig(t, eng), pairs)
			t.Logf("%s, per idle pair: %.2f fds (4 = the test's two ends + the engine's two), %.2f pipe fds, "+
				"%.3f goroutines, engine's Go heap+stacks %.0f B, process RSS %.0f B (includes the test's ends, ~%.0f B)",
				ec.name, c.fds, c.pipes, c.goroutines, c.engineMem, c.rss, c.testMem)
			if ec.name != "epoll" {
				return
			}
			t.Logf("epoll engine's own state: %d B epPair + 16 B of table slots", unsafe.Sizeof(epPair{}))
			if c.goroutines*pairs >= 50 {
				t.Errorf("goroutines grew by %.0f for %d idle pairs", c.goroutines*pairs, pairs)
			}
			if c.fds != 4 {
				t.Errorf("%.3f descriptors per pair, want 4", c.fds)
			}
			if c.pipes != 0 {
				t.Errorf("%.3f pipe descriptors per idle pair, want 0", c.pipes)
			}
		})
	}
}

// idleCost is what one idle pair costs, averaged over many.
type idleCost struct {
	fds, pipes, goroutines float64
	engineMem, testMem     float64 // Go heap + stacks, bytes
	rss                    float64 // bytes, the whole process
}

// measureIdle opens n pairs, makes each carry one exchange, measures the
// process while they are idle, then closes them.
func measureIdle(t *testing.T, r *rig, n int) idleCost {
	fds0, pipes0 := settleFDs(t)
	g0 := runtime.NumGoroutine()
	mem0, rss0 := memNow()
	all, ps := make([]*ends, n), make([]*Pair, n)
	for i := range all {
		all[i], ps[i] = r.connect()
		ps[i].Idle = time.Hour
	}
	memConns, _ := memNow() // four *net.TCPConn per pair, two of them the test's
	for _, p := range ps {
		r.eng.Start(*p)
	}
	ps = nil
	if err := echoAll(all); err != nil { // every pair is running, then idle
		t.Fatal(err)
	}
	fds, pipes := countFDs(t)
	g := runtime.NumGoroutine()
	mem, rss := memNow()
	testMem := float64(memConns-mem0) / 2
	c := idleCost{
		fds: float64(fds-fds0) / float64(n), pipes: float64(pipes-pipes0) / float64(n),
		goroutines: float64(g-g0) / float64(n), testMem: testMem / float64(n),
		engineMem: (float64(mem) - float64(mem0) - testMem) / float64(n),
		rss:       (float64(rss) - float64(rss0)) / float64(n),
	}
	for _, e := range all {
		e.client.Close()
		e.backend.Close()
	}
	for _, e := range all {
		e.wait(t)
	}
	return c
}

// memNow returns the Go heap plus goroutine stacks in use after a GC, and
// the process's resident set.
func memNow() (goMem, rss uint64) {
	for range 4 { // objects with finalizers (closed net.Conns) need two cycles
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	goMem = ms.HeapAlloc + ms.StackInuse
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			rss = pages * uint64(os.Getpagesize())
		}
	}
	return goMem, rss
}

// TestEpollBulkUsesPipesOnlyWhileMoving checks that a bulk transfer's
// pipes go back to the pool when it ends, and the pool stays bounded.
func TestEpollBulkUsesPipesOnlyWhileMoving(t *testing.T) {
	eng, err := NewEpollEngine(EpollOptions{Loops: 1, PoolPipes: 2})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, eng)
	_, pipes0 := countFDs(t)
	var all []*ends
	for range 8 {
		e := r.pair(nil)
		sent, got := stream(e.client, e.backend, 4<<20, 4, 64<<10, 0)
		checkStream(t, "client->backend", sent, got)
		all = append(all, e)
	}
	if _, pipes := countFDs(t); pipes-pipes0 > 2*2 {
		t.Errorf("%d pipe fds after the transfers, want at most the pool (2 pipes)", pipes-pipes0)
	}
	for _, e := range all {
		e.backend.Close()
		e.wait(t)
	}
}

// TestEpollPipeBudget checks that the engine never holds more than
// MaxPipes splice pipes, however many directions turn bulk at once, and
// that a direction left without one still delivers every byte (buffered).
func TestEpollPipeBudget(t *testing.T) {
	eng, err := NewEpollEngine(EpollOptions{Loops: 2, MaxPipes: 1, PoolPipes: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, eng)
	_, pipes0 := settleFDs(t)
	const pairs = 4
	var sent, got []chan streamResult
	var all []*ends
	for i := range pairs {
		e := r.pair(nil)
		all = append(all, e)
		// Slow readers: every direction fills its destination and waits,
		// holding its pipe (or its buffered bytes) meanwhile.
		s, g := stream(e.backend, e.client, 8<<20, uint64(i), 64<<10, time.Millisecond)
		sent, got = append(sent, s), append(got, g)
	}
	most := 0
	for done := 0; done < pairs; {
		select {
		case res := <-got[done]:
			got[done] <- res // for checkStream
			done++
		case <-time.After(time.Millisecond):
		}
		_, pipes := countFDs(t)
		most = max(most, pipes-pipes0)
	}
	for i := range pairs {
		checkStream(t, "backend->client", sent[i], got[i])
	}
	if most > 2 {
		t.Errorf("%d pipe descriptors open at once, want at most 2 (MaxPipes 1)", most)
	}
	if n := eng.(*EpollEngine).pipes.Load(); n > 1 {
		t.Errorf("engine counts %d pipes after the transfers, want at most 1", n)
	}
	for _, e := range all {
		e.client.Close()
		e.backend.Close()
		e.wait(t)
	}
}

// TestEpQueueFIFO checks the ready queue's order across wrap-around and
// growth: pairs are served in the order they were queued.
func TestEpQueueFIFO(t *testing.T) {
	var q epQueue
	ps := make([]*epPair, 100)
	for i := range ps {
		ps[i] = &epPair{tick: int64(i)}
	}
	next, want := 0, 0
	for round := range 20 { // push 7, pop 5: the ring wraps and grows
		for range 7 {
			if next < len(ps) {
				q.push(ps[next])
				next++
			}
		}
		for range 5 + round%3 {
			if q.n == 0 {
				break
			}
			if p := q.pop(); p != ps[want] {
				t.Fatalf("popped pair %d, want %d", p.tick, want)
			}
			want++
		}
	}
	for q.n > 0 {
		if p := q.pop(); p != ps[want] {
			t.Fatalf("popped pair %d, want %d", p.tick, want)
		}
		want++
	}
	if want != next {
		t.Fatalf("popped %d pairs, pushed %d", want, next)
	}
}

// TestEpollBusyCounts checks the loops' busy clock: it runs while a loop
// moves bytes, and stands still while no loop wakes (no pair, no timer).
func TestEpollBusyCounts(t *testing.T) {
	eng, err := NewEpollEngine(EpollOptions{Loops: 2})
	if err != nil {
		t.Fatal(err)
	}
	ee := eng.(*EpollEngine)
	r := newRig(t, eng)
	e := r.pair(nil)
	sent, got := stream(e.client, e.backend, 8<<20, 1, 64<<10, 0)
	checkStream(t, "client->backend", sent, got)
	e.closeClean(t)
	// Done runs before the loop parks: wait until the clock settles.
	var worked time.Duration
	testkit.WaitFor(t, "the loops park", func() bool {
		b := ee.Busy()
		time.Sleep(10 * time.Millisecond)
		worked = ee.Busy()
		return worked == b
	})
	if worked <= 0 {
		t.Fatalf("Busy = %v after 8 MiB relayed, want > 0", worked)
	}
	// No pair is left, so no loop has a timer or an event: parked time
	// must not count (a clock that ran while parked would move here).
	time.Sleep(3 * 50 * time.Millisecond) // three default Ticks
	if b := ee.Busy(); b != worked {
		t.Errorf("Busy went from %v to %v with every loop parked and nothing to do", worked, b)
	}
}
