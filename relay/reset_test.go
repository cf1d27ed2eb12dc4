//go:build linux

package relay

// A socket that resets after sending still delivers what it sent: Linux
// keeps the bytes received before an RST readable, and the engine must
// pass them on before it closes the pair. The case users meet: a backend
// (Node's http server) answers 400 and closes with the rest of the request
// unread, so its kernel sends an RST right behind the 400.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stickyd/stickyd/internal/testkit"
)

const (
	reply400    = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"
	requestHead = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
)

// message is size bytes that start with head and go on with numbered
// filler, so that a lost or reordered piece shows.
func message(head string, size int) []byte {
	var b bytes.Buffer
	b.WriteString(head)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%07d\n", i)
	}
	return b.Bytes()[:max(size, len(head))]
}

// unacked is what c has sent that its peer's kernel has not acknowledged
// (SIOCOUTQ), -1 if it cannot tell.
func unacked(c *net.TCPConn) int {
	n := -1
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
				n = v
			}
		})
	}
	return n
}

// resetWhenSent waits until the engine's socket has acknowledged every
// byte c wrote (they are in its receive queue, or read), then resets c:
// SO_LINGER 0 makes close send an RST, as unread bytes would.
func resetWhenSent(t *testing.T, c *net.TCPConn) {
	t.Helper()
	testkit.WaitFor(t, "the peer to acknowledge every byte", func() bool { return unacked(c) == 0 }, testkit.Every(time.Millisecond))
	c.SetLinger(0)
	c.Close()
}

// readToEnd reads c until EOF or a reset; anything else fails t.
func readToEnd(t *testing.T, c *net.TCPConn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testkit.Guard))
	var got bytes.Buffer
	_, err := io.Copy(&got, c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after %d bytes: %v (want EOF or a reset)", got.Len(), err)
	}
	return got.Bytes()
}

// sameBytes fails t if got is not want, saying where they part.
func sameBytes(t *testing.T, who string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < min(len(got), len(want)) && got[i] == want[i] {
		i++
	}
	t.Fatalf("%s got %d bytes, want %d; they differ from byte %d", who, len(got), len(want), i)
}

// bigQueues lets the engine's sockets of p queue a whole test message
// unread, so that it can wait there behind an RST.
func bigQueues(t *testing.T, p *Pair) {
	t.Helper()
	for _, c := range []Conn{p.Client, p.Backend} {
		if err := c.(*net.TCPConn).SetReadBuffer(1 << 20); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEngineResetKeepsQueuedBytes: one side sends a message and resets
// before the pair starts, while the other side's bytes wait to go to it.
// The engine finds data, EOF-to-be and the error at once: the message
// must reach the other side whole, then an end (EOF or a reset), and Done
// must report the reset.
func TestEngineResetKeepsQueuedBytes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		for _, dir := range []string{"backend->client", "client->backend"} {
			for _, size := range []int{0, 200 << 10} {
				t.Run(fmt.Sprintf("%s/%d", strings.ReplaceAll(dir, ">", ""), size), func(t *testing.T) {
					e, p := r.connect()
					bigQueues(t, p)
					from, to, msg, other := e.backend, e.client, message(reply400, size), requestHead
					if dir == "client->backend" {
						from, to, msg, other = e.client, e.backend, message(requestHead, size), "220 banner\r\n"
					}
					write(t, to, other) // for the side that is gone
					write(t, from, string(msg))
					resetWhenSent(t, from)
					r.eng.Start(*p)
					got := readToEnd(t, to)
					checkResetStats(t, e.wait(t), dir, len(msg))
					sameBytes(t, dir, got, msg)
				})
			}
		}
	})
}

// checkResetStats checks the Stats of a pair ended by a reset of the side
// that sent n bytes in direction dir.
func checkResetStats(t *testing.T, s Stats, dir string, n int) {
	t.Helper()
	moved := s.BytesOut
	if dir == "client->backend" {
		moved = s.BytesIn
	}
	if s.Err == nil || moved != int64(n) {
		t.Errorf("Stats = %+v; want Err set (the reset) and %d bytes %s", s, n, dir)
	}
	t.Logf("Stats.Err = %v", s.Err)
}

// TestEngineResetWhileBlocked: the side that resets has sent more than
// its peer takes at once (1 MiB, the peer not reading yet); the engine
// waits for the peer (EAGAIN) with the rest still queued unread when the
// RST comes. The peer, reading only then, must get every byte.
func TestEngineResetWhileBlocked(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		for _, dir := range []string{"backend->client", "client->backend"} {
			t.Run(strings.ReplaceAll(dir, ">", ""), func(t *testing.T) {
				e, p := r.connect()
				bigQueues(t, p)
				from, to, out := e.backend, e.client, p.Client.(*net.TCPConn)
				if dir == "client->backend" {
					from, to, out = e.client, e.backend, p.Backend.(*net.TCPConn)
				}
				// The engine's side towards the reader is narrow (a fixed
				// send buffer, no autotuning), so that most of msg waits
				// in the engine's receive queue while it waits for EPOLLOUT.
				out.SetWriteBuffer(16 << 10)
				r.eng.Start(*p)
				msg := message(reply400, 1<<20)
				write(t, from, string(msg))
				resetWhenSent(t, from)
				got := readToEnd(t, to)
				checkResetStats(t, e.wait(t), dir, len(msg))
				sameBytes(t, dir, got, msg)
			})
		}
	})
}

// sendUntil writes to c until stop is closed or a write fails (the engine
// closed its side). It closes sent when it returns.
func sendUntil(c *net.TCPConn, stop <-chan struct{}, sent chan<- struct{}) {
	defer close(sent)
	chunk := make([]byte, 16<<10)
	for {
		select {
		case <-stop:
			return
		default:
		}
		c.SetWriteDeadline(time.Now().Add(testkit.Guard))
		if _, err := c.Write(chunk); err != nil {
			return
		}
	}
}

// closingReply is the size of the reply in closingPair: much more than the
// reader takes while it does not read (64-128 KiB), all of it within the
// engine's send buffer (see sndBufForce).
const closingReply = 400 << 10

// sndBufForce sets c's send buffer to n bytes, past net.core.wmem_max
// (SO_SNDBUFFORCE, which needs CAP_NET_ADMIN): SO_SNDBUF stops at
// wmem_max (208 KiB by default, doubled), and the kernel counts each
// packet's overhead against it too.
func sndBufForce(c *net.TCPConn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	if cerr := rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n) }); cerr != nil {
		return cerr
	}
	return err
}

// closingPair connects a pair and starts it with the reader's side set up
// for closing (see closing.go): the engine's socket towards the reader
// takes the whole reply into its send queue, and most of the reply waits
// there while the reader does not read. from is the side that will reset,
// to the reader, which sends until stop is closed.
func closingPair(t *testing.T, r *rig, dir string, stop <-chan struct{}, sent chan<- struct{}) (e *ends, from, to *net.TCPConn) {
	e, p := r.connect()
	from, to, out := e.backend, e.client, p.Client.(*net.TCPConn)
	if dir == "client->backend" {
		from, to, out = e.client, e.backend, p.Backend.(*net.TCPConn)
	}
	// Room for the whole reply beyond net.core.wmem_max (root only).
	if err := sndBufForce(out, 8<<20); err != nil {
		t.Skipf("SO_SNDBUFFORCE: %v", err)
	}
	go sendUntil(to, stop, sent)
	r.eng.Start(*p)
	write(t, from, string(message(reply400, closingReply)))
	return e, from, to
}

// inQueue is how many received bytes wait unread in c (SIOCINQ).
func inQueue(c *net.TCPConn) int {
	n := 0
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	}
	return n
}

// closingCounts is r's engine's Closings.
func closingCounts(t *testing.T, r *rig) (closing, stalled int64) {
	t.Helper()
	cc, ok := r.eng.(ClosingCounter)
	if !ok {
		t.Fatalf("%T does not count its closing sockets", r.eng)
	}
	return cc.Closings()
}

// TestEngineResetWhilePeerSends: as TestEngineResetWhileBlocked, but the
// reader sends all along (the rest of an upload the backend refused) and
// reads only once the engine has had time to end the pair. The engine
// must not close its side while the reader has not received every byte:
// the reader's next bytes would draw an RST, which would throw away what
// the engine still held for it (see closing.go). Done comes only then.
func TestEngineResetWhilePeerSends(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		for _, dir := range []string{"backend->client", "client->backend"} {
			t.Run(strings.ReplaceAll(dir, ">", ""), func(t *testing.T) {
				stop, sent := make(chan struct{}), make(chan struct{})
				defer func() { close(stop); <-sent }()
				e, from, to := closingPair(t, r, dir, stop, sent)
				resetWhenSent(t, from)
				testkit.WaitFor(t, "the reply to reach the reader", func() bool { return inQueue(to) > 0 }, testkit.Every(time.Millisecond))
				select { // not a condition: time for an engine that closes too early to do it
				case s := <-e.done:
					t.Errorf("Done (%v) before the reader took the reply", s.Err)
					e.done <- s
				case <-time.After(200 * time.Millisecond):
				}
				testkit.WaitFor(t, "Closings to count the closing socket", func() bool {
					n, _ := closingCounts(t, r)
					return n == 1
				}, testkit.Every(time.Millisecond))
				got := readToEnd(t, to)
				checkResetStats(t, e.wait(t), dir, closingReply)
				sameBytes(t, dir, got, message(reply400, closingReply))
				if n, stalled := closingCounts(t, r); n != 0 || stalled != 0 {
					t.Errorf("Closings after Done = %d closing, %d stalled; want 0, 0", n, stalled)
				}
			})
		}
	})
}

// TestEngineClosingStalls: after a reset, a reader that takes nothing and
// sends on holds its pair only until it has acknowledged nothing for
// closingStall: then the pair ends (Done, descriptors released) and the
// reader's side is reset under its writes. Both directions at once, and
// the engines in parallel (each has its own listeners), so that the
// stalls overlap.
func TestEngineClosingStalls(t *testing.T) {
	fds, _ := settleFDs(t)
	t.Run("engines", func(t *testing.T) {
		forEachEngine(t, func(t *testing.T, r *rig) {
			t.Parallel()
			type stalled struct {
				dir  string
				e    *ends
				sent chan struct{}
			}
			var all []stalled
			for _, dir := range []string{"backend->client", "client->backend"} {
				stop, sent := make(chan struct{}), make(chan struct{})
				defer func() { close(stop); <-sent }()
				e, from, _ := closingPair(t, r, dir, stop, sent)
				resetWhenSent(t, from)
				all = append(all, stalled{dir, e, sent})
			}
			for _, st := range all {
				if s := st.e.wait(t); s.Err == nil {
					t.Errorf("%s: Stats.Err = nil, want the reset", st.dir)
				}
				select {
				case <-st.sent: // a write failed: the engine's side is gone
				case <-time.After(testkit.Guard):
					t.Errorf("%s: the reader's writes still succeed after Done", st.dir)
				}
			}
			if n, stalled := closingCounts(t, r); n != 0 || stalled != int64(len(all)) {
				t.Errorf("Closings after the stalls = %d closing, %d stalled; want 0, %d", n, stalled, len(all))
			}
		})
	})
	waitFDs(t, fds) // Go's splice pipes close by finalizer, a GC or two later
}

// TestEngineCloseAllWhileClosing: CloseAll ends pairs that wait, after a
// reset, for a reader that takes nothing (see TestEngineClosingStalls),
// each with one Done.
func TestEngineCloseAllWhileClosing(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		var all []*ends
		for range 8 {
			stop, sent := make(chan struct{}), make(chan struct{})
			t.Cleanup(func() { close(stop); <-sent })
			e, from, to := closingPair(t, r, "backend->client", stop, sent)
			resetWhenSent(t, from)
			testkit.WaitFor(t, "the reply to reach the reader", func() bool { return inQueue(to) > 0 }, testkit.Every(time.Millisecond))
			all = append(all, e)
		}
		// Each is closing, or (on a slow machine) stalled already.
		testkit.WaitFor(t, "Closings to count the closing sockets", func() bool {
			n, stalled := closingCounts(t, r)
			return n+stalled == int64(len(all))
		}, testkit.Every(time.Millisecond))
		r.eng.CloseAll()
		_, before := closingCounts(t, r)
		for _, e := range all {
			if s := e.wait(t); s.Err == nil {
				t.Errorf("Done after CloseAll: Err = nil")
			}
		}
		if n, stalled := closingCounts(t, r); n != 0 || stalled != before {
			t.Errorf("Closings after CloseAll = %d closing, %d stalled; want 0, %d (CloseAll is no stall)", n, stalled, before)
		}
	})
}

// TestGoroutineDeliverRest: when a direction of a goroutine pair stopped
// before its end (another error aborted it) and its source was reset,
// run still writes on what the source's queue holds, then half-closes.
func TestGoroutineDeliverRest(t *testing.T) {
	r := newRig(t, NewGoroutineEngine())
	e, p := r.connect()
	bigQueues(t, p)
	msg := message(reply400, 300<<10)
	write(t, e.backend, string(msg))
	resetWhenSent(t, e.backend)
	gp := &goPair{Pair: p, start: time.Now()}
	testkit.WaitFor(t, "the reset to reach the engine's socket", func() bool { return tcpClosed(p.Backend) }, testkit.Every(time.Millisecond))
	got := make(chan []byte, 1)
	go func() { // to the client's end (EOF; an error shows as missing bytes)
		var b bytes.Buffer
		e.client.SetReadDeadline(time.Now().Add(testkit.Guard))
		io.Copy(&b, e.client)
		got <- b.Bytes()
	}()
	if n := gp.deliverRest(1); n != int64(len(msg)) {
		t.Errorf("deliverRest wrote %d bytes, want %d", n, len(msg))
	}
	if n := gp.deliverRest(0); n != 0 {
		t.Errorf("deliverRest(0) wrote %d bytes, want 0 (its source did not fail)", n)
	}
	sameBytes(t, "backend->client", testkit.Await(t, got, "the client did not reach an end"), msg)
	p.Client.Close()
	p.Backend.Close()
}

// TestEngineResetThenTimeout: the backend resets with its reply queued in
// the engine, and the client never reads it: the half-close timeout
// (Linger) ends the pair, and Done must say so (ErrIdle), so that the cut
// reply is put down to the timeout. The epoll engine learns of the reset
// at once (EPOLLERR) and reports it too; the goroutine engine, blocked
// writing to the client, never reads as far as the reset.
func TestEngineResetThenTimeout(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		e, p := r.connect()
		bigQueues(t, p)
		p.Client.(*net.TCPConn).SetWriteBuffer(16 << 10) // most of the reply waits in the engine
		p.Linger = 300 * time.Millisecond
		r.eng.Start(*p)
		write(t, e.backend, string(message(reply400, 1<<20)))
		resetWhenSent(t, e.backend)
		s := e.wait(t) // the client reads nothing
		_, epoll := r.eng.(*EpollEngine)
		if !errors.Is(s.Err, ErrIdle) || epoll && !errors.Is(s.Err, syscall.ECONNRESET) {
			t.Errorf("Stats.Err = %v; want ErrIdle (and, from the epoll engine, the reset)", s.Err)
		}
		// The epoll engine also says how much of the reply was cut: all
		// of it reached the engine's kernel (resetWhenSent), and BytesOut
		// went on to the client.
		want := fmt.Sprintf("relay: %d bytes the backend sent before that were not delivered", 1<<20-s.BytesOut)
		if epoll && !strings.Contains(fmt.Sprint(s.Err), want) {
			t.Errorf("Stats.Err = %v; want it to say %q", s.Err, want)
		}
		if s.BytesOut >= 1<<20 {
			t.Errorf("BytesOut = %d: the client took the whole reply without reading", s.BytesOut)
		}
	})
}
