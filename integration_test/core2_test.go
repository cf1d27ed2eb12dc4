package integration_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// A direct IPv6 client: the backend is told its IPv6 address, in v2 and v1.
func TestIPv6Client(t *testing.T) {
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			b := startBackend(t, "only")
			ln, err := net.Listen("tcp", "[::1]:0")
			if err != nil {
				t.Skipf("no IPv6 loopback: %v", err)
			}
			addr := ln.Addr().String()
			ln.Close()
			startStickyd(t, "--backend", b.flag(), "--send-proxy", v, "--listen", addr)
			c := dialFrom(t, "::1", addr) // the last --listen wins
			defer c.Close()
			_, got, _ := greeting(t, c)
			if got.String() != c.LocalAddr().String() {
				t.Errorf("backend saw %s, client is %s", got, c.LocalAddr())
			}
		})
	}
}

// --idle-timeout closes a connection silent both ways, and not one whose
// traffic keeps flowing in one direction only.
func TestIdleTimeout(t *testing.T) {
	b := startBackend(t, "only")
	p := startStickyd(t, "--backend", b.flag(), "--idle-timeout", "400ms")
	idle := dialFrom(t, "127.0.0.1", p.addr)
	defer idle.Close()
	busy := dialFrom(t, "127.0.0.2", p.addr)
	defer busy.Close()
	greeting(t, idle)
	_, _, br := greeting(t, busy)

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
	select {
	case d := <-closed:
		if d < 300*time.Millisecond {
			t.Errorf("idle connection closed after %v, before the 400ms timeout", d)
		}
	case <-time.After(hangGuard):
		t.Fatal("idle connection never closed")
	}
}
