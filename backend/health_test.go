package backend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/proxyproto"
	"go.uber.org/zap"
)

// healthServer is a backend that requires a PROXY header, then (in HTTP
// mode) answers one request with status. It records every header it read.
type healthServer struct {
	ln     net.Listener
	status atomic.Int32 // HTTP status to answer; 0: TCP only
	conns  atomic.Int64
	locals atomic.Int64 // connections that opened with a LOCAL header
	paths  chan string  // request paths, buffered
	wg     sync.WaitGroup
}

func startHealthServer(t *testing.T, status int) *healthServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &healthServer{ln: ln, paths: make(chan string, 100)}
	s.status.Store(int32(status))
	s.wg.Go(s.serve)
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *healthServer) addr() string { return s.ln.Addr().String() }

func (s *healthServer) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Go(func() { s.handle(c) })
	}
}

func (s *healthServer) handle(c net.Conn) {
	defer c.Close()
	s.conns.Add(1)
	h, rest, err := proxyproto.ReadHeader(c, time.Second)
	if err != nil {
		return
	}
	if h.Local {
		s.locals.Add(1)
	}
	status := int(s.status.Load())
	if status == 0 {
		return
	}
	c.SetDeadline(time.Now().Add(time.Second))
	req, err := http.ReadRequest(bufio.NewReader(io.MultiReader(bytes.NewReader(rest), c)))
	if err != nil {
		return
	}
	select {
	case s.paths <- req.URL.Path:
	default:
	}
	fmt.Fprintf(c, "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status)
}

func oneBackendSet(t *testing.T, addrs ...string) *Set {
	t.Helper()
	var specs []Spec
	for i, a := range addrs {
		specs = append(specs, Spec{Name: fmt.Sprintf("b%d", i), Address: a})
	}
	set, err := NewSet(specs, Options{DialTimeout: time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestHealthTCPSendsLocalHeader(t *testing.T) {
	srv := startHealthServer(t, 0)
	set := oneBackendSet(t, srv.addr())
	hc := NewHealthChecker(HealthConfig{Mode: HealthTCP, SendProxy: 2}, func() *Set { return set }, zap.NewNop())
	if err := hc.Check(context.Background(), set.Backends()[0]); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the LOCAL header", func() bool { return srv.locals.Load() == 1 })

	refused := testkit.FreePort(t)
	set = oneBackendSet(t, refused)
	if err := hc.Check(context.Background(), set.Backends()[0]); err == nil {
		t.Error("check of a closed port passed")
	}
}

func TestHealthHTTPStatus(t *testing.T) {
	tests := []struct {
		status, expect int
		ok             bool
	}{
		{200, 0, true}, {302, 0, true}, {503, 0, false}, {404, 0, false},
		{204, 204, true}, {200, 204, false},
	}
	srv := startHealthServer(t, 200)
	set := oneBackendSet(t, srv.addr())
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d_expect_%d", tc.status, tc.expect), func(t *testing.T) {
			srv.status.Store(int32(tc.status))
			hc := NewHealthChecker(HealthConfig{Mode: HealthHTTP, Path: "/ready", ExpectStatus: tc.expect, SendProxy: 2},
				func() *Set { return set }, zap.NewNop())
			err := hc.Check(context.Background(), set.Backends()[0])
			if tc.ok != (err == nil) {
				t.Fatalf("Check = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok && !errors.Is(err, ErrHealthStatus) {
				t.Errorf("%v does not wrap ErrHealthStatus", err)
			}
			if p := <-srv.paths; p != "/ready" {
				t.Errorf("path %q", p)
			}
		})
	}
}

func TestHealthHTTPTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts (backlog) but never answers
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	set := oneBackendSet(t, ln.Addr().String())
	hc := NewHealthChecker(HealthConfig{Mode: HealthHTTP, Timeout: 50 * time.Millisecond},
		func() *Set { return set }, zap.NewNop())
	start := time.Now()
	if err := hc.Check(context.Background(), set.Backends()[0]); err == nil {
		t.Fatal("a silent backend passed")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("check took %v", d)
	}
}

// Fall failures take a backend out, Rise successes bring it back; the
// other backend takes its clients meanwhile.
func TestHealthRiseFall(t *testing.T) {
	a, b := startHealthServer(t, 200), startHealthServer(t, 200)
	set := oneBackendSet(t, a.addr(), b.addr())
	hc := NewHealthChecker(HealthConfig{Mode: HealthHTTP, Rise: 2, Fall: 3, SendProxy: 2},
		func() *Set { return set }, zap.NewNop())
	ctx := context.Background()
	ba := set.Backends()[0]
	ip := ipFor(t, set, ba)

	a.status.Store(503)
	for i := range 3 {
		if ba.State() != StateUp {
			t.Fatalf("round %d: state %s before %d failures", i, ba.State(), 3)
		}
		hc.Round(ctx)
	}
	if ba.State() != StateUnhealthy || ba.Healthy() {
		t.Fatalf("after 3 failures: state %s", ba.State())
	}
	if got := set.Lookup(ip); got == ba {
		t.Error("Lookup still picks the unhealthy backend")
	}
	a.status.Store(200)
	hc.Round(ctx)
	if ba.Healthy() {
		t.Fatal("healthy after one success, want Rise=2")
	}
	hc.Round(ctx)
	if ba.State() != StateUp {
		t.Fatalf("after 2 successes: state %s", ba.State())
	}
	if got := set.Lookup(ip); got != ba {
		t.Errorf("client did not come back: %v", got.Name)
	}
}

// ipFor returns a client IP whose home backend is b.
func ipFor(t *testing.T, set *Set, b *Backend) netip.Addr {
	t.Helper()
	for i := range 1000 {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		if set.Preferred(ip) == b {
			return ip
		}
	}
	t.Fatal("no IP maps to", b.Name)
	return netip.Addr{}
}

// A launched worker that is not ready is left to its supervisor: no check,
// no verdict; readiness and health compose.
func TestHealthSkipsNotReady(t *testing.T) {
	srv := startHealthServer(t, 0)
	set, err := NewSet([]Spec{{Name: "w", Address: srv.addr(), NotReady: true}}, Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	hc := NewHealthChecker(HealthConfig{Mode: HealthTCP, Fall: 1}, func() *Set { return set }, zap.NewNop())
	hc.Round(context.Background())
	if n := srv.conns.Load(); n != 0 {
		t.Errorf("%d checks of a worker that is not ready", n)
	}
	w := set.Backends()[0]
	w.SetReady(true)
	w.SetHealthy(false)
	if w.State() != StateUnhealthy || w.Up() {
		t.Errorf("ready but unhealthy: state %s", w.State())
	}
	w.SetReady(false)
	if w.State() != StateDown {
		t.Errorf("not ready and unhealthy: state %s", w.State())
	}
}

// With checks disabled (after a reload), Run clears earlier verdicts.
func TestHealthDisabledRunMarksHealthy(t *testing.T) {
	set := oneBackendSet(t, "127.0.0.1:1")
	set.Backends()[0].SetHealthy(false)
	NewHealthChecker(HealthConfig{Mode: HealthNone}, func() *Set { return set }, zap.NewNop()).Run(context.Background())
	if !set.Backends()[0].Healthy() {
		t.Error("still unhealthy")
	}
}

// Run stops when its context ends, and follows the set it is given.
func TestHealthRunFollowsSet(t *testing.T) {
	a := startHealthServer(t, 0)
	var cur atomic.Pointer[Set]
	cur.Store(oneBackendSet(t, testkit.FreePort(t)))
	hc := NewHealthChecker(HealthConfig{Mode: HealthTCP, Interval: 10 * time.Millisecond, Fall: 1},
		cur.Load, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hc.Run(ctx); close(done) }()
	testkit.WaitFor(t, "the dead backend marked unhealthy", func() bool { return !cur.Load().Backends()[0].Healthy() })
	cur.Store(oneBackendSet(t, a.addr()))
	testkit.WaitFor(t, "checks of the new set", func() bool { return a.conns.Load() > 0 })
	cancel()
	testkit.Await(t, done, "Run did not return")
}

// An unhealthy backend is a last resort: tried only when no backend is up.
func TestHealthUnhealthyIsLastResort(t *testing.T) {
	a := startHealthServer(t, 0)
	set := oneBackendSet(t, a.addr())
	set.Backends()[0].SetHealthy(false)
	b, conn, err := set.Dial(context.Background(), netip.MustParseAddr("10.1.2.3"))
	if err != nil {
		t.Fatalf("only backend unhealthy: %v", err)
	}
	conn.Close()
	b.Release()
	if set.Lookup(netip.MustParseAddr("10.1.2.3")) != nil {
		t.Error("Lookup returned an unhealthy backend")
	}
}

// EjectAfter failed dials in a row, not fewer, start the cool-down; a
// success resets the count.
func TestHealthPassiveEjectAfter(t *testing.T) {
	dead := testkit.FreePort(t)
	set, err := NewSet([]Spec{{Name: "d", Address: dead}},
		Options{DialTimeout: time.Second, EjectAfter: 2, Cooldown: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	d := set.Backends()[0]
	ip := netip.MustParseAddr("10.9.9.9")
	if _, _, err := set.Dial(context.Background(), ip); err == nil {
		t.Fatal("dial of a closed port succeeded")
	}
	if d.State() != StateUp {
		t.Fatalf("after 1 failure: %s, want up (EjectAfter 2)", d.State())
	}
	set.Dial(context.Background(), ip)
	if d.State() != StateCooldown {
		t.Fatalf("after 2 failures: %s, want cooldown", d.State())
	}
	if d.DialFailures() != 2 {
		t.Errorf("DialFailures = %d", d.DialFailures())
	}
}
