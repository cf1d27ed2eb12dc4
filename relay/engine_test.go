//go:build unix

package relay

// The conformance suite: every test runs against every Engine, on real
// loopback sockets. The test plays both the client and the backend; the
// engine relays between its own two sockets of each pair.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

var engines = []struct {
	name string
	new  func() (Engine, error)
}{
	{"goroutine", func() (Engine, error) { return NewGoroutineEngine(), nil }},
	{"epoll", func() (Engine, error) { return NewEpollEngine(EpollOptions{}) }},
}

// testEngines adds, for the tests only, an epoll engine with tiny buffers
// and pipes and no pipe pool: every transfer goes through its rarer paths
// (partial writes, pending copies, pipes taken and returned). It runs Done
// on its loop (InlineDone), as the server's engine does.
var testEngines = append(engines[:len(engines):len(engines)], struct {
	name string
	new  func() (Engine, error)
}{"epoll-tiny", func() (Engine, error) {
	return NewEpollEngine(EpollOptions{Loops: 1, BufferSize: 1000, PipeSize: 4096, PoolPipes: -1, Tick: 10 * time.Millisecond, InlineDone: true})
}})

// forEachEngine runs f as a subtest per engine, each with a fresh rig.
func forEachEngine(t *testing.T, f func(t *testing.T, r *rig)) {
	for _, ec := range testEngines {
		t.Run(ec.name, func(t *testing.T) {
			eng, err := ec.new()
			if err != nil {
				t.Skipf("engine %s: %v", ec.name, err)
			}
			f(t, newRig(t, eng))
		})
	}
}

// rig is a front listener (where the test's clients connect) and a back
// listener (where the engine side's backend sockets connect), plus an Engine.
type rig struct {
	t     testing.TB
	eng   Engine
	front *net.TCPListener
	back  *net.TCPListener
}

func newRig(t testing.TB, eng Engine) *rig {
	t.Helper()
	r := &rig{t: t, eng: eng, front: listen(t), back: listen(t)}
	t.Cleanup(func() {
		if err := eng.Close(); err != nil {
			t.Errorf("engine Close: %v", err)
		}
	})
	return r
}

func listen(t testing.TB) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// ends are the test's sides of one relayed pair.
type ends struct {
	client  *net.TCPConn // the test's client socket
	backend *net.TCPConn // the test's backend socket
	done    chan Stats   // Pair.Done's Stats
	calls   atomic.Int32 // Pair.Done calls
}

// connect makes the four sockets of a pair and returns the test's ends and
// the engine's Pair, not yet started.
func (r *rig) connect() (*ends, *Pair) {
	r.t.Helper()
	e := &ends{done: make(chan Stats, 1)}
	client, proxyClient := dialAccept(r.t, r.front)
	proxyBackend, backend := dialAccept(r.t, r.back)
	e.client, e.backend = client, backend
	r.t.Cleanup(func() {
		client.Close()
		backend.Close()
		if n := e.calls.Load(); n > 1 {
			r.t.Errorf("Done called %d times", n)
		}
	})
	p := &Pair{Client: proxyClient, Backend: proxyBackend, Done: func(s Stats) {
		if e.calls.Add(1) == 1 {
			e.done <- s
		}
	}}
	return e, p
}

// pair connects and starts a pair; cfg, if not nil, edits it first.
func (r *rig) pair(cfg func(*Pair)) *ends {
	r.t.Helper()
	e, p := r.connect()
	if cfg != nil {
		cfg(p)
	}
	r.eng.Start(*p)
	return e
}

// dialAccept returns both ends of a new connection to ln.
func dialAccept(t testing.TB, ln *net.TCPListener) (dialed, accepted *net.TCPConn) {
	t.Helper()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.AcceptTCP()
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	return d, a
}

// wait returns the pair's Stats, failing the test if Done does not come.
func (e *ends) wait(t testing.TB) Stats {
	t.Helper()
	return testkit.Await(t, e.done, "Done not called")
}

// closeClean ends a pair from both sides (client first) and checks that
// Done reports a clean end.
func (e *ends) closeClean(t testing.TB) Stats {
	t.Helper()
	e.client.CloseWrite()
	expectEOF(t, e.backend)
	e.backend.Close()
	expectEOF(t, e.client)
	s := e.wait(t)
	if s.Err != nil {
		t.Errorf("Done: Err = %v, want nil", s.Err)
	}
	return s
}

// readN reads exactly n bytes from c, or fails.
func readN(t testing.TB, c *net.TCPConn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testkit.Guard))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func write(t testing.TB, c *net.TCPConn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// expectEOF reads from c until a clean end of stream.
func expectEOF(t testing.TB, c *net.TCPConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testkit.Guard))
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		t.Fatalf("want EOF, got %d bytes, err %v", n, err)
	}
}

func TestEngineEcho(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		e := r.pair(nil)
		write(t, e.client, "hello")
		if got := readN(t, e.backend, 5); string(got) != "hello" {
			t.Fatalf("backend got %q", got)
		}
		write(t, e.backend, "world!")
		if got := readN(t, e.client, 6); string(got) != "world!" {
			t.Fatalf("client got %q", got)
		}
		s := e.closeClean(t)
		if s.BytesIn != 5 || s.BytesOut != 6 {
			t.Errorf("Stats = %+v, want 5 in, 6 out", s)
		}
	})
}

func TestEnginePendingFirst(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		e, p := r.connect()
		p.Pending = []byte("PENDING-")
		write(t, e.client, "after") // already queued on the engine's socket
		r.eng.Start(*p)
		if got := readN(t, e.backend, 13); string(got) != "PENDING-after" {
			t.Fatalf("backend got %q", got)
		}
		if s := e.closeClean(t); s.BytesIn != 13 {
			t.Errorf("BytesIn = %d, want 13 (Pending included)", s.BytesIn)
		}
	})
}

// A header and pending bytes larger than the socket buffers: the engine's
// first write takes only part of them (inside the header, or inside the
// pending bytes), and the rest must follow in order, before the client's
// next bytes.
func TestEngineLargeHeaderAndPending(t *testing.T) {
	const big = 8 << 20
	for _, tc := range []struct {
		name            string
		header, pending int
	}{
		{"pending", 64, big},
		{"header", big, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, r *rig) {
				e, p := r.connect()
				p.Header = bytes.Repeat([]byte{'H'}, tc.header)
				p.Pending = make([]byte, tc.pending)
				for i := range p.Pending {
					p.Pending[i] = byte(i % 251)
				}
				want := append(append(append([]byte(nil), p.Header...), p.Pending...), "after"...)
				r.eng.Start(*p) // the backend is not reading yet
				write(t, e.client, "after")
				if got := readN(t, e.backend, len(want)); !bytes.Equal(got, want) {
					i := 0
					for i < len(got) && got[i] == want[i] {
						i++
					}
					t.Fatalf("backend stream differs from header+pending+client bytes at byte %d of %d", i, len(want))
				}
				if s := e.closeClean(t); s.BytesIn != int64(tc.pending+5) {
					t.Errorf("BytesIn = %d, want %d (header excluded)", s.BytesIn, tc.pending+5)
				}
			})
		})
	}
}

// sendStream writes total bytes of numbered random blocks to c, then
// half-closes it, and returns their hash.
func sendStream(c *net.TCPConn, total int, seed uint64) ([32]byte, error) {
	block := make([]byte, 1<<20-13) // odd size: never aligned with buffers
	rand.NewChaCha8([32]byte{byte(seed)}).Read(block)
	h := sha256.New()
	for i, sent := 0, 0; sent < total; i++ {
		b := block[:min(len(block), total-sent)]
		binary.LittleEndian.PutUint64(b, uint64(i)) // reordered blocks change the hash
		if _, err := c.Write(b); err != nil {
			return [32]byte{}, err
		}
		h.Write(b)
		sent += len(b)
	}
	return [32]byte(h.Sum(nil)), c.CloseWrite()
}

// recvStream reads c to EOF, in reads of at most chunk bytes with pause
// between them (a slow reader), and returns the hash and count.
func recvStream(c *net.TCPConn, chunk int, pause time.Duration) ([32]byte, int64, error) {
	h := sha256.New()
	buf := make([]byte, chunk)
	var n int64
	for {
		m, err := c.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			return [32]byte(h.Sum(nil)), n, nil
		}
		if err != nil {
			return [32]byte{}, n, err
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
}

type streamResult struct {
	sum [32]byte
	n   int64
	err error
}

// stream sends size bytes from -> to in goroutines; the returned channels
// give the sender's and the receiver's result.
func stream(from, to *net.TCPConn, size int, seed uint64, chunk int, pause time.Duration) (sent, got chan streamResult) {
	sent, got = make(chan streamResult, 1), make(chan streamResult, 1)
	to.SetReadDeadline(time.Now().Add(3 * testkit.Guard))
	go func() {
		sum, err := sendStream(from, size, seed)
		sent <- streamResult{sum, int64(size), err}
	}()
	go func() {
		sum, n, err := recvStream(to, chunk, pause)
		got <- streamResult{sum, n, err}
	}()
	return sent, got
}

// checkStream compares what was sent with what arrived.
func checkStream(t *testing.T, dir string, sent, got chan streamResult) {
	t.Helper()
	var s, g streamResult
	for i := 0; i < 2; i++ {
		select {
		case s = <-sent:
		case g = <-got:
		case <-time.After(3 * testkit.Guard):
			t.Fatalf("%s: stream hangs", dir)
		}
	}
	if s.err != nil || g.err != nil {
		t.Fatalf("%s: send err %v, receive err %v", dir, s.err, g.err)
	}
	if g.n != s.n || g.sum != s.sum {
		t.Fatalf("%s: received %d bytes (sha256 %x), sent %d (%x)", dir, g.n, g.sum[:6], s.n, s.sum[:6])
	}
}

func TestEngineStreamBothWays(t *testing.T) {
	const size = 100 << 20
	forEachEngine(t, func(t *testing.T, r *rig) {
		e := r.pair(nil)
		inSent, inGot := stream(e.client, e.backend, size, 1, 256<<10, 0)
		outSent, outGot := stream(e.backend, e.client, size, 2, 256<<10, 0)
		checkStream(t, "client->backend", inSent, inGot)
		checkStream(t, "backend->client", outSent, outGot)
		s := e.wait(t)
		if s.Err != nil || s.BytesIn != size || s.BytesOut != size {
			t.Errorf("Stats = %+v, want %d each way, no error", s, size)
		}
	})
}

func TestEngineBackPressure(t *testing.T) {
	const size = 50 << 20
	forEachEngine(t, func(t *testing.T, r *rig) {
		for _, dir := range []string{"backend->client", "client->backend"} {
			t.Run(strings.ReplaceAll(dir, ">", ""), func(t *testing.T) {
				e := r.pair(nil)
				from, to := e.backend, e.client
				if dir == "client->backend" {
					from, to = e.client, e.backend
				}
				sent, got := stream(from, to, size, 3, 64<<10, 200*time.Microsecond)
				checkStream(t, dir, sent, got)
				to.CloseWrite()
				expectEOF(t, from)
				if s := e.wait(t); s.Err != nil {
					t.Errorf("Done: Err = %v", s.Err)
				}
			})
		}
	})
}

func TestEngineHalfClose(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		t.Run("client first", func(t *testing.T) {
			e := r.pair(nil)
			write(t, e.client, "request")
			e.client.CloseWrite()
			readN(t, e.backend, 7)
			expectEOF(t, e.backend) // the backend sees the client's FIN...
			write(t, e.backend, "late reply")
			if got := readN(t, e.client, 10); string(got) != "late reply" {
				t.Fatalf("client got %q", got) // ...and can still answer
			}
			e.backend.Close()
			expectEOF(t, e.client)
			if s := e.wait(t); s.Err != nil || s.BytesIn != 7 || s.BytesOut != 10 {
				t.Errorf("Stats = %+v", s)
			}
		})
		t.Run("backend first", func(t *testing.T) {
			e := r.pair(nil)
			write(t, e.backend, "banner")
			e.backend.CloseWrite()
			readN(t, e.client, 6)
			expectEOF(t, e.client)
			write(t, e.client, "late request")
			if got := readN(t, e.backend, 12); string(got) != "late request" {
				t.Fatalf("backend got %q", got)
			}
			e.client.Close()
			expectEOF(t, e.backend)
			if s := e.wait(t); s.Err != nil || s.BytesIn != 12 || s.BytesOut != 6 {
				t.Errorf("Stats = %+v", s)
			}
		})
	})
}

func TestEngineBackendReset(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		e := r.pair(nil)
		werr := make(chan error, 1)
		go func() { // the client streams until the relay breaks
			buf := make([]byte, 64<<10)
			e.client.SetWriteDeadline(time.Now().Add(testkit.Guard))
			for {
				if _, err := e.client.Write(buf); err != nil {
					werr <- err
					return
				}
			}
		}()
		readN(t, e.backend, 1<<20)
		e.backend.SetLinger(0)
		e.backend.Close() // RST
		s := e.wait(t)
		if s.Err == nil {
			t.Errorf("Done: Err = nil after a backend reset")
		}
		t.Logf("Stats.Err = %v", s.Err)
		e.client.SetReadDeadline(time.Now().Add(testkit.Guard))
		if _, err := io.Copy(io.Discard, e.client); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("client was not closed")
		}
		if err := testkit.Await(t, werr, "client writer hangs"); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("client writes blocked instead of failing")
		}
	})
}

func TestEngineIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	forEachEngine(t, func(t *testing.T, r *rig) {
		t.Run("idle pair is closed", func(t *testing.T) {
			start := time.Now()
			e := r.pair(func(p *Pair) { p.Idle = idle })
			s := e.wait(t)
			if !errors.Is(s.Err, ErrIdle) {
				t.Errorf("Done: Err = %v, want ErrIdle", s.Err)
			}
			if d := time.Since(start); d < idle {
				t.Errorf("closed after %v, before the idle timeout %v", d, idle)
			}
			expectEOF(t, e.client)
			expectEOF(t, e.backend)
		})
		t.Run("active pair is kept", func(t *testing.T) {
			e := r.pair(func(p *Pair) { p.Idle = idle })
			tick := time.NewTicker(idle / 4)
			defer tick.Stop()
			for range 16 { // 4 idle periods of traffic
				<-tick.C
				write(t, e.client, "p")
				readN(t, e.backend, 1)
				write(t, e.backend, "q")
				readN(t, e.client, 1)
			}
			select {
			case s := <-e.done:
				t.Fatalf("active pair closed: %+v", s)
			default:
			}
			e.closeClean(t)
		})
	})
}

func TestEngineLinger(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		start := time.Now()
		e := r.pair(func(p *Pair) { p.Linger = 200 * time.Millisecond }) // no idle timeout
		e.client.CloseWrite()
		expectEOF(t, e.backend) // the backend never answers nor closes
		if s := e.wait(t); !errors.Is(s.Err, ErrIdle) {
			t.Errorf("Done: Err = %v, want ErrIdle", s.Err)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("closed after %v, before the linger bound", d)
		}
	})
}

// TestEngineStalledReader: a client that stops reading while the backend
// sends more than the sockets hold is closed once nothing has moved for
// Idle, or, after the backend's reset, for Linger (no idle timeout): no
// read is under way on the engine's side to time out, only a blocked
// write. (A FIN would not do: it waits behind the bytes the engine's full
// socket cannot take, so the engine never learns of it.)
func TestEngineStalledReader(t *testing.T) {
	const bound = 300 * time.Millisecond
	cases := []struct {
		name  string
		set   func(*Pair)
		reset bool // the backend resets once its writes block
	}{
		{"idle", func(p *Pair) { p.Idle = bound }, false},
		{"linger after the backend's reset", func(p *Pair) { p.Linger = bound }, true},
	}
	forEachEngine(t, func(t *testing.T, r *rig) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				e := r.pair(tc.set)
				e.client.SetReadBuffer(4 << 10)
				sent := make(chan struct{})
				go func() { // until the engine's side takes no more
					defer close(sent)
					chunk := make([]byte, 64<<10)
					for {
						e.backend.SetWriteDeadline(time.Now().Add(bound / 2))
						if _, err := e.backend.Write(chunk); err != nil {
							return
						}
					}
				}()
				<-sent
				if tc.reset {
					e.backend.SetLinger(0)
					e.backend.Close()
				}
				// Done at all is the point; after a reset its Err may be
				// the reset, the first error (as the epoll engine says).
				if s := e.wait(t); !errors.Is(s.Err, ErrIdle) && !(tc.reset && errors.Is(s.Err, syscall.ECONNRESET)) {
					t.Errorf("Done: Err = %v, want ErrIdle", s.Err)
				}
			})
		}
	})
}

// TestEngineClientGoneBeforeStart: bytes and FIN that arrived before Start
// still reach the backend.
func TestEngineClientGoneBeforeStart(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		e, p := r.connect()
		write(t, e.client, "bye")
		e.client.Close()
		r.eng.Start(*p)
		if got := readN(t, e.backend, 3); string(got) != "bye" {
			t.Fatalf("backend got %q", got)
		}
		expectEOF(t, e.backend)
		e.backend.Close()
		if s := e.wait(t); s.Err != nil || s.BytesIn != 3 {
			t.Errorf("Stats = %+v", s)
		}
	})
}

// TestEngineUnixSockets relays between Unix stream sockets.
func TestEngineUnixSockets(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		dir := t.TempDir()
		pairUnix := func(name string) (a, b *net.UnixConn) {
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: dir + "/" + name, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			a, err = net.DialUnix("unix", nil, ln.Addr().(*net.UnixAddr))
			if err != nil {
				t.Fatal(err)
			}
			if b, err = ln.AcceptUnix(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close(); b.Close() })
			return a, b
		}
		client, proxyClient := pairUnix("front")
		proxyBackend, backend := pairUnix("back")
		done := make(chan Stats, 1)
		r.eng.Start(Pair{Client: proxyClient, Backend: proxyBackend, Done: func(s Stats) { done <- s }})
		client.Write([]byte("ping"))
		buf := make([]byte, 4)
		backend.SetDeadline(time.Now().Add(testkit.Guard))
		client.SetDeadline(time.Now().Add(testkit.Guard))
		if _, err := io.ReadFull(backend, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("backend got %q, %v", buf, err)
		}
		backend.Write([]byte("pong"))
		if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "pong" {
			t.Fatalf("client got %q, %v", buf, err)
		}
		client.Close()
		if n, err := io.Copy(io.Discard, backend); n != 0 || err != nil {
			t.Fatalf("backend: want EOF, got %d bytes, %v", n, err)
		}
		backend.Close()
		if s := testkit.Await(t, done, "Done not called"); s.Err != nil || s.BytesIn != 4 || s.BytesOut != 4 {
			t.Errorf("Stats = %+v", s)
		}
	})
}

func TestEngineCloseAll(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		var all []*ends
		for range 20 {
			e := r.pair(nil)
			write(t, e.client, "x")
			readN(t, e.backend, 1) // the pair is running
			all = append(all, e)
		}
		r.eng.CloseAll()
		for _, e := range all {
			if s := e.wait(t); !errors.Is(s.Err, ErrShutdown) || !errors.Is(s.Err, net.ErrClosed) {
				t.Errorf("Done after CloseAll: Err = %v, want ErrShutdown", s.Err)
			}
			expectEOF(t, e.client)
			expectEOF(t, e.backend)
		}
	})
}

// TestEngineManyPairs runs 2000 pairs at once and checks that every
// descriptor is released once they end.
func TestEngineManyPairs(t *testing.T) {
	const pairs, workers = 2000, 40
	forEachEngine(t, func(t *testing.T, r *rig) {
		before, _ := settleFDs(t)
		all := make([]*ends, pairs)
		for i := range all {
			all[i] = r.pair(func(p *Pair) { p.Idle = time.Minute })
		}
		errc := make(chan error, workers)
		for w := range workers {
			go func() { errc <- echoAll(all[w*pairs/workers : (w+1)*pairs/workers]) }()
		}
		for range workers {
			if err := testkit.Await(t, errc, "echo hangs"); err != nil {
				t.Fatal(err)
			}
		}
		for _, e := range all {
			e.client.Close()
			e.backend.Close()
		}
		for _, e := range all {
			if s := e.wait(t); s.BytesIn != 4 || s.BytesOut != 4 {
				t.Fatalf("Stats = %+v", s)
			}
		}
		waitFDs(t, before)
	})
}

// echoAll makes each pair of the slice carry one request and one reply.
func echoAll(all []*ends) error {
	buf := make([]byte, 4)
	for i, e := range all {
		msg := binary.LittleEndian.AppendUint32(nil, uint32(i))
		deadline := time.Now().Add(testkit.Guard)
		e.client.SetDeadline(deadline)
		e.backend.SetDeadline(deadline)
		if _, err := e.client.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(e.backend, buf); err != nil || !bytes.Equal(buf, msg) {
			return errors.Join(errors.New("backend read"), err)
		}
		if _, err := e.backend.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(e.client, buf); err != nil || !bytes.Equal(buf, msg) {
			return errors.Join(errors.New("client read"), err)
		}
	}
	return nil
}

// countFDs counts the process's open descriptors, and those that are
// pipes.
func countFDs(t testing.TB) (total, pipes int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			pipes++
		}
	}
	return len(ents), pipes
}

// settleFDs lets garbage descriptors be closed and returns the counts.
// The epoll engine closes everything before Done; the goroutine engine's
// splice pipes (Go's own pool) are closed by finalizers once the pool is
// collected, hence the GCs and the polling.
func settleFDs(t testing.TB) (total, pipes int) {
	t.Helper()
	prev := -1
	for deadline := time.Now().Add(testkit.Guard); time.Now().Before(deadline); {
		runtime.GC()
		total, pipes = countFDs(t)
		if total == prev {
			return total, pipes
		}
		prev = total
		time.Sleep(20 * time.Millisecond)
	}
	return total, pipes
}

// waitFDs waits for the descriptor count to come back to want (or below:
// descriptors from earlier tests may have been collected meanwhile).
func waitFDs(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(testkit.Guard)
	for {
		got, _ := countFDs(t)
		if got <= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open, want %d", got, want)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEngineEcho measures short connections: 64 bytes each way, then
// the client closes. cpu-ns/op is the whole process's CPU per connection,
// the test's client and backend included, so compare engines by ratio.
// relay: one connection at a time, its four sockets made outside the
// timing (the engine's share is largest); full: GOMAXPROCS*4 goroutines
// each connecting, relaying and closing.
func BenchmarkEngineEcho(b *testing.B) {
	for _, ec := range engines {
		for _, mode := range []string{"relay", "full"} {
			b.Run(ec.name+"/"+mode, func(b *testing.B) {
				eng, err := ec.new()
				if err != nil {
					b.Skip(err)
				}
				r := newRig(b, eng)
				if mode == "relay" {
					benchRelayOnly(b, r)
					return
				}
				cpu := cpuTime()
				b.SetParallelism(4)
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, 64)
					for pb.Next() {
						e, p := r.connect()
						r.eng.Start(*p)
						echoOnce(e, buf)
					}
				})
				b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// benchRelayOnly relays b.N connections one by one, connecting them in
// batches with the timer (and the CPU count) stopped.
func benchRelayOnly(b *testing.B, r *rig) {
	const batch = 64
	buf := make([]byte, 64)
	var cpu time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		b.StopTimer()
		es, ps := make([]*ends, min(batch, b.N-i)), make([]*Pair, min(batch, b.N-i))
		for j := range es {
			es[j], ps[j] = r.connect()
		}
		c0 := cpuTime()
		b.StartTimer()
		for j, e := range es {
			r.eng.Start(*ps[j])
			echoOnce(e, buf)
		}
		cpu += cpuTime() - c0
	}
	b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
}

// echoOnce relays one short exchange on a started pair and waits for Done.
func echoOnce(e *ends, buf []byte) {
	e.client.Write(buf)
	io.ReadFull(e.backend, buf)
	e.backend.Write(buf)
	io.ReadFull(e.client, buf)
	e.client.Close()
	io.Copy(io.Discard, e.backend)
	e.backend.Close()
	<-e.done
}

// BenchmarkEngineStream measures one bulk transfer client -> backend.
func BenchmarkEngineStream(b *testing.B) {
	const chunk = 1 << 20
	for _, ec := range engines {
		b.Run(ec.name, func(b *testing.B) {
			eng, err := ec.new()
			if err != nil {
				b.Skip(err)
			}
			r := newRig(b, eng)
			e := r.pair(nil)
			got := make(chan int64, 1)
			go func() { // big reads: keep the test side cheap
				buf, n := make([]byte, chunk), int64(0)
				for {
					m, err := e.backend.Read(buf)
					n += int64(m)
					if err != nil {
						got <- n
						return
					}
				}
			}()
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			cpu := cpuTime()
			b.ResetTimer()
			for range b.N {
				if _, err := e.client.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			e.client.CloseWrite()
			if n := <-got; n != int64(b.N)*chunk {
				b.Fatalf("received %d bytes, want %d", n, b.N*chunk)
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}
