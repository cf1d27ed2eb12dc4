package server

// Helpers for the server's tests: a Server on 127.0.0.1:0 with real relay
// engines and backend sets, a PROXY-aware echo backend, and clients bound to
// chosen loopback addresses.

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var engines = []struct {
	name string
	new  func() (relay.Engine, error)
}{
	{"goroutine", func() (relay.Engine, error) { return relay.NewGoroutineEngine(), nil }},
	{"epoll", func() (relay.Engine, error) { return relay.NewEpollEngine(relay.EpollOptions{Loops: 1}) }},
	{"epoll-2-loops", twoLoops},
}

// forEachEngine runs f as a subtest per relay engine.
func forEachEngine(t *testing.T, f func(t *testing.T, newEngine func() (relay.Engine, error))) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) { f(t, e.new) })
	}
}

// rig is a running Server, its listener and its log.
type rig struct {
	srv    *Server
	addr   string
	logs   *observer.ObservedLogs
	served chan error // Serve's result
	done   bool       // Shutdown already called by the test
}

// startServer runs a Server with opts in front of backends, on the engine
// made by newEngine (the goroutine engine when nil), sending PROXY v2 unless
// opts say v1. At cleanup it shuts the
// server down (cutting whatever is left) and checks Serve's result.
func startServer(t *testing.T, opts Options, newEngine func() (relay.Engine, error), backends ...*testkit.Backend) *rig {
	t.Helper()
	if opts.SendProxy == 0 {
		opts.SendProxy = 2 // the fake backends need a header
	}
	if newEngine == nil {
		newEngine = engines[0].new
	}
	eng, err := newEngine()
	if err != nil {
		t.Fatal(err)
	}
	var specs []backend.Spec
	for _, b := range backends {
		specs = append(specs, backend.Spec{Name: b.Name, Address: b.Addr()})
	}
	set, err := backend.NewSet(specs, backend.Options{DialTimeout: time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	r := &rig{logs: logs, served: make(chan error, 1)}
	r.srv = New(opts, set, eng, zap.New(core))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	go func() { r.served <- r.srv.Serve(ln) }()
	t.Cleanup(func() {
		if !r.done {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			r.srv.Shutdown(ctx)
		}
		if err := testkit.Await(t, r.served, "Serve did not return after Shutdown"); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return r
}

// refusals returns the "connection refused" log entries for peer ip.
func (r *rig) refusals(ip string) []observer.LoggedEntry {
	var out []observer.LoggedEntry
	for _, e := range r.logs.FilterMessage("connection refused").All() {
		if peer, _ := e.ContextMap()["peer"].(string); strings.HasPrefix(peer, ip+":") {
			out = append(out, e)
		}
	}
	return out
}

// startBackend starts a PROXY-aware greeting/echo backend whose
// connections all end (and their goroutines return) before the test's
// cleanup does, each bounded by testkit.Guard.
func startBackend(t *testing.T, name string) *testkit.Backend {
	t.Helper()
	return testkit.StartBackend(t, name, testkit.WaitHandlers(), testkit.ConnTimeout(testkit.Guard))
}
