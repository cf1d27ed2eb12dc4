//go:build linux

package relay

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// Bulk pairs started on one loop of two are spread over both as they turn
// bulk, and every byte arrives, both ways: with default buffers, and with
// tiny ones (pairs move with bytes pending and in their pipes). A moved
// pair still half-closes, times out and reports its Stats.
func TestEpollBulkPairsMove(t *testing.T) {
	const pairs, size = 8, 8 << 20
	for _, tc := range []struct {
		name string
		opts EpollOptions
	}{
		{"default", EpollOptions{Loops: 2}},
		{"tiny", EpollOptions{Loops: 2, BufferSize: 1000, PipeSize: 4096, PoolPipes: -1, Tick: 10 * time.Millisecond, InlineDone: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, all := pairsOnOneLoop(t, tc.opts, pairs, func(i int, p *Pair) {
				p.Idle = time.Minute
				if i >= pairs/2 {
					p.Idle = 3 * time.Second
				}
			})
			both := watchBulk(e)
			type streams struct{ inSent, inGot, outSent, outGot chan streamResult }
			ss := make([]streams, pairs)
			for i, p := range all {
				ss[i].inSent, ss[i].inGot = stream(p.client, p.backend, size, uint64(2*i), 64<<10, 0)
				if i < pairs/2 { // the others stay half-closed, to time out
					ss[i].outSent, ss[i].outGot = stream(p.backend, p.client, size, uint64(2*i+1), 64<<10, 0)
				}
			}
			for i, s := range ss {
				checkStream(t, "client->backend", s.inSent, s.inGot)
				if i < pairs/2 {
					checkStream(t, "backend->client", s.outSent, s.outGot)
				}
			}
			most := <-both
			t.Logf("%d of %d bulk pairs moved; at most %d bulk pairs on each loop at once", e.moves.Load(), pairs, most)
			if e.moves.Load() == 0 || most == 0 {
				t.Errorf("%d pairs moved, at most %d bulk pairs on each loop at once: want both loops used", e.moves.Load(), most)
			}
			for i, p := range all {
				s := p.wait(t)
				switch {
				case i < pairs/2 && (s.Err != nil || s.BytesIn != size || s.BytesOut != size):
					t.Errorf("pair %d: Stats = %+v, want %d bytes each way, no error", i, s, size)
				case i >= pairs/2 && (!errors.Is(s.Err, ErrIdle) || s.BytesIn != size || s.BytesOut != 0):
					t.Errorf("pair %d: Stats = %+v, want %d bytes in, the idle timeout", i, s, size)
				}
			}
			waitBulk(t, e, 0)
		})
	}
}

// watchBulk samples the loops' bulk counts until every pair has ended,
// and sends the most bulk pairs both loops held at once.
func watchBulk(e *EpollEngine) chan int32 {
	most := make(chan int32, 1)
	go func() {
		var m int32
		for start := time.Now(); time.Since(start) < 3*time.Minute; time.Sleep(time.Millisecond) {
			b0, b1 := e.loops[0].bulk.Load(), e.loops[1].bulk.Load()
			m = max(m, min(b0, b1))
			if m > 0 && b0+b1 == 0 {
				break
			}
		}
		most <- m
	}()
	return most
}

// waitBulk waits until the engine's loops count n bulk pairs in all.
func waitBulk(t *testing.T, e *EpollEngine, n int32) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var sum int32
		for _, l := range e.loops {
			sum += l.bulk.Load()
		}
		if sum == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bulk pairs counted: %d, want %d", sum, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CloseAll while bulk pairs move between loops closes every one of them.
func TestEpollCloseAllWhileMoving(t *testing.T) {
	e, all := pairsOnOneLoop(t, EpollOptions{Loops: 2, BufferSize: 1000, PipeSize: 4096, PoolPipes: -1}, 16, nil)
	for i, p := range all {
		stream(p.client, p.backend, 1<<30, uint64(i), 64<<10, 0) // ended by CloseAll
	}
	testkit.WaitFor(t, "a pair moved", func() bool { return e.moves.Load() > 0 })
	e.CloseAll()
	for i, p := range all {
		if s := p.wait(t); !errors.Is(s.Err, net.ErrClosed) && s.Err != nil {
			t.Errorf("pair %d: Stats.Err = %v", i, s.Err)
		}
	}
	waitBulk(t, e, 0)
}

// CloseAll while busy loops shed chatty pairs closes every one of them.
func TestEpollCloseAllWhileShedding(t *testing.T) {
	eager := &epBalance{window: int64(5 * time.Millisecond), shedBusy: 1, shedGap: 1}
	e, all := pairsOnOneLoop(t, EpollOptions{Loops: 2, balance: eager}, 32, nil)
	stop := make(chan struct{})
	defer close(stop)
	for _, p := range all {
		go chat(p, stop) // ends with an error at CloseAll
	}
	testkit.WaitFor(t, "a chatty pair shed", func() bool { return e.sheds.Load() > 0 })
	e.CloseAll()
	for i, p := range all {
		if s := p.wait(t); !errors.Is(s.Err, net.ErrClosed) && s.Err != nil {
			t.Errorf("pair %d: Stats.Err = %v", i, s.Err)
		}
	}
}

// startOnFirstLoop makes e's next Start pick its first loop (see pick).
func startOnFirstLoop(e *EpollEngine) { e.next.Store(uint32(len(e.loops) - 1)) }

// pairsOnOneLoop starts n pairs on a new epoll engine with opts, all on its
// first loop; cfg, if not nil, edits pair i first.
func pairsOnOneLoop(t *testing.T, opts EpollOptions, n int, cfg func(i int, p *Pair)) (*EpollEngine, []*ends) {
	t.Helper()
	eng, err := NewEpollEngine(opts)
	if err != nil {
		t.Skip(err)
	}
	e := eng.(*EpollEngine)
	r := newRig(t, eng)
	all := make([]*ends, n)
	for i := range all {
		startOnFirstLoop(e)
		all[i] = r.pair(func(p *Pair) {
			if cfg != nil {
				cfg(i, p)
			}
		})
	}
	return e, all
}

// Chatty pairs crowded on one loop of two, none of them bulk, are shed to
// the other once the loop has weighed them, and every message arrives
// intact and in order. They stay put when only one loop may take pairs
// (Accepting.Spread(1)).
func TestEpollChattyPairsShed(t *testing.T) {
	const pairs = 16
	eager := &epBalance{window: int64(20 * time.Millisecond), shedBusy: 1, shedGap: 1}
	for _, tc := range []struct {
		name   string
		spread int32
	}{{"both loops take", 0}, {"one loop accepts", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			e, all := pairsOnOneLoop(t, EpollOptions{Loops: 2, balance: eager}, pairs, nil)
			e.spread.Store(tc.spread)
			stop := make(chan struct{})
			rounds := make([]chan int, pairs)
			for i, p := range all {
				rounds[i] = make(chan int, 1)
				go func() { rounds[i] <- chat(p, stop) }()
			}
			// Each pair must age epShedAge windows, then be weighed: a
			// dozen windows, whatever the outcome.
			testkit.WaitFor(t, "a dozen load windows", func() bool { return e.weighs.Load() >= 24 })
			if tc.spread == 0 {
				testkit.WaitFor(t, "a chatty pair shed", func() bool { return e.sheds.Load() > 0 })
			}
			close(stop)
			for i, p := range all {
				n := testkit.Await(t, rounds[i], "chat did not end")
				if n < 0 {
					t.Fatalf("pair %d: a message went wrong", i)
				}
				s := p.closeClean(t)
				if want := int64(n * 8); s.BytesIn != want || s.BytesOut != want {
					t.Errorf("pair %d: %d bytes in, %d out, want %d each way", i, s.BytesIn, s.BytesOut, want)
				}
			}
			moved := e.sheds.Load()
			t.Logf("%d moves of %d pairs", moved, pairs)
			if tc.spread == 1 && moved != 0 {
				t.Errorf("%d pairs moved to a loop that does not accept", moved)
			}
		})
	}
}

// chat exchanges numbered 8-byte messages over p, the client asking and
// the backend answering, until stop is closed; it returns the rounds, or
// -1 if a message came back wrong.
func chat(p *ends, stop chan struct{}) int {
	var out, in [8]byte
	for n := 0; ; n++ {
		select {
		case <-stop:
			return n
		default:
		}
		deadline := time.Now().Add(testkit.Guard)
		p.client.SetDeadline(deadline)
		p.backend.SetDeadline(deadline)
		binary.LittleEndian.PutUint64(out[:], uint64(n))
		for _, step := range []struct{ from, to *net.TCPConn }{{p.client, p.backend}, {p.backend, p.client}} {
			if _, err := step.from.Write(out[:]); err != nil {
				return -1
			}
			if _, err := io.ReadFull(step.to, in[:]); err != nil || in != out {
				return -1
			}
		}
	}
}

// Short connections are never shed, however busy their loop: each ends
// before it is epShedAge windows old. Four are open at a time, each with
// an exchange when it opens and one before it closes, so that many move
// bytes in two windows (12-14 of 700-900 moved without the age rule).
func TestEpollShortPairsStay(t *testing.T) {
	eager := &epBalance{window: int64(100 * time.Millisecond), shedBusy: 1, shedGap: 1}
	eng, err := NewEpollEngine(EpollOptions{Loops: 2, balance: eager})
	if err != nil {
		t.Skip(err)
	}
	e := eng.(*EpollEngine)
	r := newRig(t, eng)
	var open [4]*ends
	short := 0
	for start := e.weighs.Load(); e.weighs.Load() < start+12; short++ {
		startOnFirstLoop(e)
		p, i := r.pair(nil), short%len(open)
		if err := echoAll([]*ends{p}); err != nil {
			t.Fatal(err)
		}
		if old := open[i]; old != nil {
			if err := echoAll([]*ends{old}); err != nil {
				t.Fatal(err)
			}
			old.closeClean(t)
		}
		open[i] = p
	}
	t.Logf("%d short pairs, %d shed", short, e.sheds.Load())
	if m := e.sheds.Load(); m != 0 {
		t.Errorf("%d short pairs moved", m)
	}
}
