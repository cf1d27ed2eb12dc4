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
