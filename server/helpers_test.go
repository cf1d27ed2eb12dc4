package server

// Helpers for the server's tests: a Server on 127.0.0.1:0 with real relay
// engines and backend sets, a PROXY-aware echo backend, and clients bound to
// chosen loopback addresses.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// guard bounds every wait: a hang fails the test instead.
const guard = 20 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var engines = []struct {
	name string
	new  func() (relay.Engine, error)
}{
	{"goroutine", func() (relay.Engine, error) { return relay.NewGoroutineEngine(), nil }},
	{"epoll", func() (relay.Engine, error) { return relay.NewEpollEngine(relay.EpollOptions{Loops: 1}) }},
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
func startServer(t *testing.T, opts Options, newEngine func() (relay.Engine, error), backends ...*fakeBackend) *rig {
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
		specs = append(specs, backend.Spec{Name: b.name, Address: b.addr()})
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
		select {
		case err := <-r.served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(guard):
			t.Error("Serve did not return after Shutdown")
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

// fakeBackend is a PROXY-aware echo server: it reads the header stickyd
// sends, answers "<name> <source addr>\n", then echoes until EOF.
type fakeBackend struct {
	name  string
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu
	seen  []*pp.Header          // guarded by mu
}

func startBackend(t *testing.T, name string) *fakeBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{name: name, ln: ln, conns: make(map[net.Conn]struct{})}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.close)
	return b
}

func (b *fakeBackend) addr() string { return b.ln.Addr().String() }

func (b *fakeBackend) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Add(1)
		go b.handle(c)
	}
}

func (b *fakeBackend) handle(c net.Conn) {
	defer b.wg.Done()
	defer func() {
		c.Close()
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
	}()
	c.SetDeadline(time.Now().Add(guard))
	br := bufio.NewReader(c)
	h, err := pp.Read(br)
	if err != nil {
		fmt.Fprintf(c, "%s no-header\n", b.name)
		return
	}
	b.mu.Lock()
	b.seen = append(b.seen, h)
	b.mu.Unlock()
	fmt.Fprintf(c, "%s %s\n", b.name, h.SourceAddr)
	io.Copy(c, br)
	c.(*net.TCPConn).CloseWrite()
}

func (b *fakeBackend) close() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *fakeBackend) headers() []*pp.Header {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*pp.Header(nil), b.seen...)
}

// dial connects to addr from the loopback address src, with the guard as
// deadline. The connection is closed at cleanup.
func dial(t *testing.T, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: guard, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	c.SetDeadline(time.Now().Add(guard))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// greet reads the backend's greeting: its name and the client address it
// was told.
func greet(t *testing.T, c net.Conn) (string, netip.AddrPort, *bufio.Reader) {
	t.Helper()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v (got %q)", err, line)
	}
	name, addr, _ := strings.Cut(strings.TrimSpace(line), " ")
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("greeting %q: %v", line, err)
	}
	return name, ap, br
}

// readAll reads until EOF or error, within the guard.
func readAll(t *testing.T, c net.Conn) (string, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(guard))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection not closed within %v (got %q)", guard, b)
	}
	return string(b), err
}

// waitFor polls cond until it holds or the guard expires.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
