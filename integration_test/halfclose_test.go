package integration_test

// --half-close-timeout: once one side of a connection has closed, the other
// is closed after this long without a byte moving, and not while bytes
// still move.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// halfCloseBackend reads each connection to its end (the client's FIN,
// passed on by stickyd), then does what after says, and holds the
// connection open until the test ends.
func halfCloseBackend(t *testing.T, after func(c net.Conn)) string {
	var tr testkit.Tracked
	tr.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) {
		if _, err := io.Copy(io.Discard, c); err == nil {
			after(c)
		}
	})
	return tr.Addr()
}

// halfCloseClient connects through stickyd at addr, sends a request and
// half-closes: it waits for the reply.
func halfCloseClient(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c := testkit.Dial(t, "127.0.0.1", addr)
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHalfCloseTimeout(t *testing.T) {
	for _, engine := range resetEngines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			// A backend that never answers a request whose client has
			// half-closed: the connection closes after the timeout, not
			// before; without the flag (and no idle timeout) it stays.
			silent := halfCloseBackend(t, func(net.Conn) {})
			p := startStickyd(t, "--backend", "app="+silent, "--send-proxy", "none", "--engine", engine,
				"--half-close-timeout", "400ms")
			start := time.Now()
			c := halfCloseClient(t, p.addr)
			got, err := testkit.ReadAll(t, c)
			if err != nil || len(got) != 0 {
				t.Fatalf("silent backend: read %q, %v; want EOF", got, err)
			}
			if d := time.Since(start); d < 300*time.Millisecond {
				t.Errorf("silent backend: closed after %v, before the 400ms timeout", d)
			}

			plain := startStickyd(t, "--backend", "app="+silent, "--send-proxy", "none", "--engine", engine)
			c = halfCloseClient(t, plain.addr)
			c.SetReadDeadline(time.Now().Add(time.Second))
			if got, err := io.ReadAll(c); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("without --half-close-timeout: read %q, %v after 1 s; want the connection still open", got, err)
			}

			// A backend that answers slowly, a line every 100 ms for 2 s
			// (four times the timeout), then closes: nothing is cut.
			var want bytes.Buffer
			for i := range 20 {
				fmt.Fprintf(&want, "line %d\n", i)
			}
			slow := halfCloseBackend(t, func(c net.Conn) {
				for _, line := range bytes.SplitAfter(want.Bytes(), []byte("\n")) {
					c.Write(line)
					time.Sleep(100 * time.Millisecond) // pacing the answer, not synchronising
				}
				c.Close()
			})
			q := startStickyd(t, "--backend", "app="+slow, "--send-proxy", "none", "--engine", engine,
				"--half-close-timeout", "500ms")
			c = halfCloseClient(t, q.addr)
			if got, err := testkit.ReadAll(t, c); err != nil || got != want.String() {
				t.Errorf("slow backend: read %q, %v; want all %d lines, then EOF", got, err, 20)
			}
		})
	}
}

// TestHalfCloseTimeoutStalledClient: after the backend reset, a client that
// takes nothing of the rest of the reply is closed after the timeout
// (stickyd_connections_open drops to 0), not held for ever: no read is
// under way on stickyd's side, only a blocked write to the client.
func TestHalfCloseTimeoutStalledClient(t *testing.T) {
	for _, engine := range resetEngines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			ln := testkit.Listen(t, "127.0.0.1:0")
			acked := make(chan int64, 1)
			go stallThenReset(ln, longReply(), acked)
			adm := testkit.FreePort(t)
			p := startStickyd(t, "--backend", "app="+ln.Addr().String(), "--send-proxy", "none",
				"--engine", engine, "--half-close-timeout", "400ms", "--admin", adm)
			c := testkit.Dial(t, "127.0.0.1", p.addr)
			c.Write([]byte("POST /upload HTTP/1.1\r\nHost: x\r\n\r\n"))
			if n := testkit.Await(t, acked, "the backend did not stall"); n < 0 {
				t.Fatal("the backend failed before its reset")
			}
			testkit.WaitFor(t, "the stalled connection closed", func() bool {
				return opsMetric(t, adm, "stickyd_connections_open") == 0
			})
		})
	}
}
