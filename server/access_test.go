package server

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/logging"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// accessLines waits for n lines in the access log logs and returns them
// by the client they name.
func accessLines(t *testing.T, logs *observer.ObservedLogs, n int) map[string]map[string]any {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("%d access log lines", n), func() bool { return logs.Len() >= n })
	out := map[string]map[string]any{}
	for _, e := range logs.All() {
		if e.Message != "connection" || e.Level != zap.InfoLevel {
			t.Errorf("access log line %q at %v", e.Message, e.Level)
		}
		m := e.ContextMap()
		out[fmt.Sprint(m["client"])] = m
	}
	if logs.Len() != n {
		t.Errorf("%d access log lines, want %d (one per connection)", logs.Len(), n)
	}
	return out
}

// Every connection gets one access log line when it ends, on every
// engine: relayed (the client a trusted upstream's header named, the
// backend, the bytes each way), refused for a PROXY header from a client
// that may not send one or over the per-client cap, and a trusted
// upstream's probe that sent nothing. Off, nothing is logged.
func TestAccessLog(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.9.0/24")},
			MaxPerClient: 1, SniffWait: 10 * time.Millisecond}, newEngine, b)
		core, logs := observer.New(zap.DebugLevel)
		r.srv.SetAccessLog(zap.New(core))

		// Relayed: 6 bytes echoed.
		c := testkit.Dial(t, "127.0.8.1", r.addr)
		name, _, br := testkit.Greeting(t, c)
		fmt.Fprint(c, "hello\n")
		if line, err := br.ReadString('\n'); err != nil || line != "hello\n" || name != "b0" {
			t.Fatalf("echo %q %v from %q", line, err, name)
		}
		greeting := len(name) + 1 + len(c.LocalAddr().String()) + 1
		c.CloseWrite()
		if rest, _ := testkit.ReadAll(t, c); rest != "" {
			t.Fatalf("after the echo: %q", rest)
		}
		relayedFrom := c.LocalAddr().String()
		c.Close()

		// Through a trusted upstream: the line names the client of its header.
		up := testkit.Dial(t, "127.0.9.1", r.addr)
		h := pp.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("203.0.113.9"), Port: 4000},
			&net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 443})
		h.WriteTo(up)
		if name, client, _ := testkit.Greeting(t, up); name != "b0" || client.String() != "203.0.113.9:4000" {
			t.Fatalf("through the upstream: %q %v", name, client)
		}
		upPeer := up.LocalAddr().String()
		up.Close()

		// A PROXY header from a client that may not send one.
		bad := testkit.Dial(t, "127.0.8.2", r.addr)
		bad.Write([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"))
		io.Copy(io.Discard, bad)
		badFrom := bad.LocalAddr().String()
		bad.Close()

		// A probe of the trusted upstream: nothing sent.
		probe := testkit.Dial(t, "127.0.9.2", r.addr)
		probeFrom := probe.LocalAddr().String()
		probe.Close()

		// Over the per-client cap.
		held := testkit.Dial(t, "127.0.8.4", r.addr)
		testkit.Greeting(t, held)
		over := testkit.Dial(t, "127.0.8.4", r.addr)
		waitRefused(t, over, "the second connection of 127.0.8.4")
		overFrom := over.LocalAddr().String()
		heldFrom := held.LocalAddr().String()
		held.Close()

		lines := accessLines(t, logs, 6)
		want := func(client string, fields map[string]any) {
			t.Helper()
			got, ok := lines[client]
			if !ok {
				t.Errorf("no access log line for %s in %v", client, lines)
				return
			}
			for k, v := range fields {
				if fmt.Sprint(got[k]) != fmt.Sprint(v) {
					t.Errorf("%s: %s = %v, want %v (line %v)", client, k, got[k], v, got)
				}
			}
			if d, ok := got["duration"].(time.Duration); !ok || d <= 0 || d > testkit.Guard {
				t.Errorf("%s: duration %v", client, got["duration"])
			}
		}
		want(relayedFrom, map[string]any{"status": "relayed", "peer": relayedFrom, "via": "socket", "backend": "b0",
			"bytes_in": 6, "bytes_out": greeting + 6})
		if _, ok := lines[relayedFrom]["end"]; ok {
			t.Errorf("a clean end has an end field: %v", lines[relayedFrom])
		}
		want("203.0.113.9:4000", map[string]any{"status": "relayed", "peer": upPeer, "via": "proxy-v2", "backend": "b0"})
		want(badFrom, map[string]any{"status": HeaderUntrusted, "bytes_out": 0})
		want(probeFrom, map[string]any{"status": AccessEmpty, "via": "socket"})
		want(overFrom, map[string]any{"status": "client_limit", "bytes_in": 0})
		want(heldFrom, map[string]any{"status": "relayed", "backend": "b0"})
		if _, ok := lines[overFrom]["backend"]; ok {
			t.Errorf("a refusal before any dial names a backend: %v", lines[overFrom])
		}
		if !strings.Contains(fmt.Sprint(lines[overFrom]["end"]), "max_connections_per_client") {
			t.Errorf("client_limit line's end: %v", lines[overFrom]["end"])
		}
		if n := r.srv.Metrics().AccessLines.Load(); n != 6 {
			t.Errorf("AccessLines = %d, want 6", n)
		}

		// Off: nothing more.
		r.srv.SetAccessLog(nil)
		if !servedFrom("127.0.8.5", r.addr) {
			t.Error("not served with the access log off")
		}
		testkit.WaitFor(t, "the connection closed", func() bool { return r.srv.Open() == 0 })
		if logs.Len() != 6 {
			t.Errorf("%d lines after the access log was turned off, want 6", logs.Len())
		}
	})
}

// BenchmarkAccessLine is the cost of one access log line, encoded and
// queued for a file (logging.OpenAccess), as each connection pays it.
func BenchmarkAccessLine(b *testing.B) {
	a, err := logging.OpenAccess(filepath.Join(b.TempDir(), "access.log"), "json", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close(testkit.Guard)
	s := &Server{metrics: NewMetrics()}
	s.SetAccessLog(a.Log)
	line := accessLine{status: AccessRelayed, peer: netip.MustParseAddrPort("10.0.0.5:40312"),
		client: netip.MustParseAddrPort("203.0.113.7:51000"), via: "proxy-v2", backend: "worker-1",
		in: 79, out: 161, took: 1600 * time.Microsecond}
	b.ReportAllocs()
	for b.Loop() {
		s.logAccess(line)
	}
}
