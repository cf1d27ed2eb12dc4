package admin

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/server"
	"go.uber.org/zap"
)

type fixture struct {
	set     *backend.Set
	metrics *server.Metrics
	srv     *httptest.Server
}

// newFixture serves the admin API over a set of three backends; "a"
// listens for real, so that a dial can be counted.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	set, err := backend.NewSet([]backend.Spec{
		{Name: "a", Address: ln.Addr().String(), Weight: 2},
		{Name: "b", Address: "127.0.0.1:1"},
		{Name: "w/0", Address: "unix:/tmp/w0.sock"},
	}, backend.Options{DialTimeout: time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{set: set, metrics: server.NewMetrics()}
	h := NewHandler(Source{Backends: func() *backend.Set { return f.set }, Metrics: f.metrics,
		Open: func() int64 { return 7 }, MaxConnections: 100, Moves: func() int64 { return 5 }, Sheds: func() int64 { return 6 },
		Busy: func() time.Duration { return 1500 * time.Millisecond }, Loops: 2,
		ProcsCeiling: func() int64 { return 1 },
		ProcsTrials:  func() (int64, int64) { return 9, 2 },
		Closings:     func() (int64, int64) { return 3, 8 }}, zap.NewNop())
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return testkit.HTTPDo(t, f.srv.Client(), req)
}

// ipOf returns a client IP whose home backend is name.
func (f *fixture) ipOf(t *testing.T, name string) string {
	t.Helper()
	for i := range 1000 {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		if f.set.Preferred(ip).Name == name {
			return ip.String()
		}
	}
	t.Fatal("no IP for", name)
	return ""
}

func TestAdminMetrics(t *testing.T) {
	f := newFixture(t)
	ip := netip.MustParseAddr(f.ipOf(t, "a"))
	b, conn, err := f.set.Dial(context.Background(), ip)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { conn.Close(); b.Release() }()
	f.metrics.Accepted.Add(3)
	f.metrics.BytesIn.Add(100)
	f.metrics.BytesOut.Add(2000)
	f.metrics.NoBackend.Add(1)
	f.metrics.LimitWaits.Add(4)
	f.set.ByName("b").SetDraining(true)
	f.set.ByName("w/0").SetHealthy(false)

	code, body := f.do(t, "GET", "/metrics") // promhttp answers 500 if a metric is inconsistent
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	for _, want := range []string{
		`stickyd_backend_connections_active{backend="a"} 1`,
		`stickyd_backend_connections_total{backend="a"} 1`,
		`stickyd_backend_dial_failures_total{backend="a"} 0`,
		`stickyd_backend_weight{backend="a"} 2`,
		`stickyd_backend_up{backend="a"} 1`,
		`stickyd_backend_up{backend="b"} 0`,
		`stickyd_backend_state{backend="b",state="draining"} 1`,
		`stickyd_backend_state{backend="b",state="up"} 0`,
		`stickyd_backend_healthy{backend="w/0"} 0`,
		`stickyd_backend_state{backend="w/0",state="unhealthy"} 1`,
		`stickyd_connections_open 7`,
		`stickyd_connections_max 100`,
		`stickyd_connections_relayed_total 3`,
		`stickyd_connections_rejected_total{reason="no_backend"} 1`,
		`stickyd_connections_rejected_total{reason="header"} 0`,
		`stickyd_max_connections_reached_total 4`,
		`stickyd_bytes_total{direction="in"} 100`,
		`stickyd_bytes_total{direction="out"} 2000`,
		`stickyd_header_errors_total{kind="untrusted"} 0`,
		`stickyd_bulk_moves_total 5`,
		`stickyd_busy_moves_total 6`,
		`stickyd_loop_busy_seconds_total 1.5`,
		`stickyd_event_loops 2`,
		`stickyd_gomaxprocs_ceiling 1`,
		`stickyd_gomaxprocs_trials_total{result="dropped"} 9`,
		`stickyd_gomaxprocs_trials_total{result="kept"} 2`,
		`stickyd_connections_closing 3`,
		`stickyd_closes_stalled_total 8`,
		`go_goroutines `,
		`process_open_fds `,
	} {
		if !strings.Contains(body, want+"\n") && !(strings.HasSuffix(want, " ") && strings.Contains(body, want)) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(body, "stickyd_worker_restarts_total") {
		t.Error("worker metrics without workers")
	}
}

func TestAdminHealthz(t *testing.T) {
	f := newFixture(t)
	if code, body := f.do(t, "GET", "/healthz"); code != 200 || !strings.Contains(body, "3 of 3") {
		t.Errorf("all up: %d %q", code, body)
	}
	for _, b := range f.set.Backends() {
		b.SetDraining(true)
	}
	if code, _ := f.do(t, "GET", "/healthz"); code != 503 {
		t.Errorf("all draining: %d, want 503", code)
	}
	f.set.ByName("b").SetDraining(false)
	f.set.ByName("b").SetHealthy(false)
	if code, _ := f.do(t, "GET", "/healthz"); code != 503 {
		t.Errorf("only an unhealthy one: %d, want 503", code)
	}
}

func TestAdminBackendsAndDrain(t *testing.T) {
	f := newFixture(t)
	list := func() map[string]BackendInfo {
		code, body := f.do(t, "GET", "/backends")
		if code != 200 {
			t.Fatalf("status %d", code)
		}
		var out []BackendInfo
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		m := map[string]BackendInfo{}
		for _, b := range out {
			m[b.Name] = b
		}
		return m
	}
	got := list()
	if a := got["a"]; a.State != "up" || a.Weight != 2 || !a.Ready || !a.Healthy || len(got) != 3 {
		t.Errorf("backends: %+v", got)
	}
	ip := f.ipOf(t, "w/0")
	if code, body := f.do(t, "POST", "/backends/w/0/drain"); code != 200 || !strings.Contains(body, `"draining"`) {
		t.Fatalf("drain: %d %s", code, body)
	}
	if got := list()["w/0"]; got.State != "draining" {
		t.Errorf("after drain: %+v", got)
	}
	var res LookupResult
	code, body := f.do(t, "GET", "/lookup?ip="+ip)
	if err := json.Unmarshal([]byte(body), &res); err != nil || code != 200 {
		t.Fatalf("lookup: %d %s", code, body)
	}
	if res.Home != "w/0" || res.Backend == "w/0" || res.Backend == "" {
		t.Errorf("lookup of a drained home: %+v", res)
	}
	if code, _ := f.do(t, "POST", "/backends/w/0/enable"); code != 200 {
		t.Fatalf("enable: %d", code)
	}
	f.do(t, "GET", "/lookup?ip="+ip)
	if code, body := f.do(t, "GET", "/lookup?ip=::ffff:"+ip); code != 200 || !strings.Contains(body, `"backend": "w/0"`) {
		t.Errorf("lookup after enable (mapped IP): %d %s", code, body)
	}
}

func TestAdminErrors(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		method, path string
		code         int
	}{
		{"GET", "/lookup?ip=nope", 400},
		{"GET", "/lookup", 400},
		{"POST", "/backends/zz/drain", 404},
		{"POST", "/backends/a/explode", 404},
		{"POST", "/backends/a", 404},
		{"GET", "/backends/a/drain", 405},
		{"POST", "/metrics", 405},
		{"GET", "/nothing", 404},
	}
	for _, tc := range tests {
		if code, body := f.do(t, tc.method, tc.path); code != tc.code {
			t.Errorf("%s %s: %d %q, want %d", tc.method, tc.path, code, body, tc.code)
		}
	}
	req, _ := http.NewRequest("POST", f.srv.URL+"/backends/a/drain", nil)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || f.set.ByName("a").Draining() {
		t.Errorf("cross-site drain: %d, draining %v", resp.StatusCode, f.set.ByName("a").Draining())
	}
	for _, b := range f.set.Backends() {
		b.SetDraining(true)
	}
	if code, _ := f.do(t, "GET", "/lookup?ip=10.0.0.1"); code != 503 {
		t.Errorf("lookup with nothing up: %d, want 503", code)
	}
}

// POST /workers/restart answers with the outcome of the rolling restart it
// asked for, its status telling done from failed, or at once with
// ?wait=false; without workers it is 404.
func TestAdminWorkersRestart(t *testing.T) {
	f := newFixture(t)
	if status, body := f.do(t, "POST", "/workers/restart"); status != http.StatusNotFound || !strings.Contains(body, "launches no workers") {
		t.Errorf("without workers: %d %q", status, body)
	}
	next := make(chan RollOutcome, 1)
	var asked atomic.Int32
	h := NewHandler(Source{Backends: func() *backend.Set { return f.set }, RollWorkers: func() <-chan RollOutcome {
		asked.Add(1)
		return next
	}}, zap.NewNop())
	srv := httptest.NewServer(h)
	defer srv.Close()
	post := func(path string) (int, RollOutcome) {
		t.Helper()
		req, err := http.NewRequest("POST", srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		status, body := testkit.HTTPDo(t, srv.Client(), req)
		var out RollOutcome
		if status != http.StatusBadRequest {
			if err := json.Unmarshal([]byte(body), &out); err != nil {
				t.Fatalf("%s: %d %q: %v", path, status, body, err)
			}
		}
		return status, out
	}
	for _, c := range []struct {
		out    RollOutcome
		status int
	}{
		{RollOutcome{Result: RollDone, Replaced: 4, Took: "3.2s"}, http.StatusOK},
		{RollOutcome{Result: RollFailed, Replaced: 1, Error: "worker-1: the replacement exited", Fix: "fix the app"}, http.StatusInternalServerError},
		{RollOutcome{Result: RollNotStarted, Error: "an upgrade (SIGUSR2) is under way"}, http.StatusConflict},
		{RollOutcome{Result: RollStopped, Error: "stickyd is stopping"}, http.StatusServiceUnavailable},
	} {
		next <- c.out
		if status, out := post("/workers/restart"); status != c.status || out != c.out {
			t.Errorf("outcome %+v: answered %d %+v, want %d and the outcome", c.out, status, out, c.status)
		}
	}
	if status, out := post("/workers/restart?wait=false"); status != http.StatusAccepted || out.Result != RollRequested {
		t.Errorf("wait=false: %d %+v", status, out)
	}
	if status, _ := post("/workers/restart?wait=maybe"); status != http.StatusBadRequest {
		t.Errorf("wait=maybe: %d, want 400", status)
	}
	if n := asked.Load(); n != 5 {
		t.Errorf("asked for %d rolling restarts, want 5 (none for the bad request)", n)
	}
}

// GET /clients: the clients with the most connections open, under a
// per-client limit; 404 without one, 400 for a bad top.
func TestAdminClients(t *testing.T) {
	limit := 0
	top := []server.ClientCount{{Client: "203.0.113.7", Open: 9}, {Client: "2001:db8:0:1::/64", Open: 4}}
	asked := 0
	h := NewHandler(Source{Backends: func() *backend.Set { return nil }, MaxPerClient: func() int { return limit },
		TopClients: func(n int) ([]server.ClientCount, int) { asked = n; return top[:min(n, len(top))], 31 }}, zap.NewNop())
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		return testkit.HTTPDo(t, srv.Client(), req)
	}
	if code, body := get("/clients"); code != 404 || !strings.Contains(body, "max_connections_per_client") {
		t.Errorf("without a limit: %d %q", code, body)
	}
	limit = 10
	for _, bad := range []string{"0", "1001", "x"} {
		if code, _ := get("/clients?top=" + bad); code != 400 {
			t.Errorf("top=%s: %d, want 400", bad, code)
		}
	}
	code, body := get("/clients?top=1")
	var res ClientsResult
	if err := json.Unmarshal([]byte(body), &res); err != nil || code != 200 {
		t.Fatalf("%d %q: %v", code, body, err)
	}
	if res.Limit != 10 || res.Clients != 31 || len(res.Top) != 1 || res.Top[0] != top[0] || asked != 1 {
		t.Errorf("GET /clients?top=1: %+v (asked for %d)", res, asked)
	}
	if get("/clients"); asked != 20 {
		t.Errorf("the default top is %d, want 20", asked)
	}
}

// POST /reload answers with the reload's outcome: 200 with what changed,
// 400 with the error of a rejected config, 503 while stopping; 404 where
// no reload is wired.
func TestAdminReload(t *testing.T) {
	f := newFixture(t)
	if status, _ := f.do(t, "POST", "/reload"); status != http.StatusNotFound {
		t.Errorf("without Reload: %d, want 404", status)
	}
	next := make(chan ReloadOutcome, 1)
	h := NewHandler(Source{Backends: func() *backend.Set { return f.set }, Reload: func() <-chan ReloadOutcome { return next }}, zap.NewNop())
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, c := range []struct {
		out    ReloadOutcome
		status int
	}{
		{ReloadOutcome{Result: ReloadDone, Added: []string{"c"}, Removed: []string{"b"}, Backends: 2, Took: "1ms"}, http.StatusOK},
		{ReloadOutcome{Result: ReloadRejected, Error: `config: invalid: line 3: key "hash_key": bad`, Fix: "correct it"}, http.StatusBadRequest},
		{ReloadOutcome{Result: ReloadStopped, Error: "stickyd is stopping"}, http.StatusServiceUnavailable},
	} {
		next <- c.out
		req, _ := http.NewRequest("POST", srv.URL+"/reload", nil)
		status, body := testkit.HTTPDo(t, srv.Client(), req)
		var out ReloadOutcome
		if err := json.Unmarshal([]byte(body), &out); err != nil || status != c.status || out.Result != c.out.Result ||
			out.Error != c.out.Error || strings.Join(out.Added, ",") != strings.Join(c.out.Added, ",") {
			t.Errorf("outcome %+v: answered %d %q (%v), want %d", c.out, status, body, err, c.status)
		}
	}
	req, _ := http.NewRequest("GET", srv.URL+"/reload", nil)
	if status, _ := testkit.HTTPDo(t, srv.Client(), req); status != http.StatusMethodNotAllowed {
		t.Errorf("GET /reload: %d, want 405", status)
	}
}
