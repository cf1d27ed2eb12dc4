package integration_test

// Health checks end to end: TCP and HTTP checks, launched workers, the
// passive cool-down.

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

// Active TCP checks open with a PROXY v2 LOCAL header, take a dead backend
// out without any client traffic, and bring it back after rise passes.
func TestHealthTCPEjectsAndRestores(t *testing.T) {
	a, b := testkit.StartBackend(t, "a"), testkit.StartBackend(t, "b")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", a.Flag(), "--backend", b.Flag(), "--admin", adm,
		"--health-check", "tcp", "--health-interval", "100ms", "--health-fall", "2", "--health-rise", "2")
	testkit.WaitFor(t, "a LOCAL health-check header", func() bool {
		for _, h := range a.Headers() {
			if h.Command.IsLocal() {
				return true
			}
		}
		return false
	})
	ip := opsHomeIP(t, adm, "b", 0)
	addr := b.Addr()
	b.Close()
	opsWaitState(t, adm, "b", "unhealthy")
	if got := opsBackends(t, adm)["b"]; got.DialFailures != 0 || got.Healthy {
		t.Errorf("b out by active checks alone: %+v", got)
	}
	if code, _ := opsDo(t, "GET", adm, "/healthz"); code != 200 {
		t.Errorf("/healthz with a up: %d", code)
	}
	if name, _, err := hello(ip, p.addr); err != nil || name != "a" {
		t.Fatalf("b's client while b is down: %q %v", name, err)
	}
	opsBackendAt(t, "b", addr)
	opsWaitState(t, adm, "b", "up")
	if name, _, err := hello(ip, p.addr); err != nil || name != "b" {
		t.Fatalf("b's client after b returned: %q %v", name, err)
	}
	if v := opsMetric(t, adm, `stickyd_backend_healthy{backend="b"}`); v != 1 {
		t.Errorf("stickyd_backend_healthy = %v", v)
	}
}

// opsHTTPBackend is an HTTP server behind a mandatory PROXY header: GET
// /ready answers status; anything else answers "<name> <client addr>".
type opsHTTPBackend struct {
	name   string
	addr   string
	status atomic.Int32
	checks atomic.Int64
}

func opsStartHTTPBackend(t *testing.T, name string) *opsHTTPBackend {
	t.Helper()
	ln := testkit.Listen(t, "127.0.0.1:0")
	b := &opsHTTPBackend{name: name, addr: ln.Addr().String()}
	b.status.Store(200)
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		b.checks.Add(1)
		w.WriteHeader(int(b.status.Load()))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %s\n", name, r.RemoteAddr) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: testkit.Guard}
	go srv.Serve(&pp.Listener{Listener: ln}) // REQUIRE: no header, no service
	t.Cleanup(func() { srv.Close() })
	return b
}

// opsGet sends GET / from ip through addr and returns the first word of
// the answer (the backend's name).
func opsGet(ip, addr string) (string, error) {
	c, err := testkit.DialFrom(ip, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	name, _, _ := strings.Cut(string(body), " ")
	return name, err
}

// HTTP checks (behind a PROXY LOCAL header) follow the status of a path.
func TestHealthHTTPFollowsStatus(t *testing.T) {
	a, b := opsStartHTTPBackend(t, "a"), opsStartHTTPBackend(t, "b")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "a="+a.addr, "--backend", "b="+b.addr, "--admin", adm,
		"--health-check", "http", "--health-path", "/ready", "--health-interval", "100ms",
		"--health-fall", "2", "--health-rise", "2")
	testkit.WaitFor(t, "checks of b", func() bool { return b.checks.Load() >= 2 })
	if s := opsBackends(t, adm)["b"].State; s != "up" {
		t.Fatalf("b passes its checks (through the PROXY LOCAL header) but is %s", s)
	}
	ip := opsHomeIP(t, adm, "b", 0)
	b.status.Store(503)
	opsWaitState(t, adm, "b", "unhealthy")
	if name, err := opsGet(ip, p.addr); err != nil || name != "a" {
		t.Fatalf("b's client while b answers 503: %q %v", name, err)
	}
	b.status.Store(200)
	opsWaitState(t, adm, "b", "up")
	if name, err := opsGet(ip, p.addr); err != nil || name != "b" {
		t.Fatalf("b's client after b recovered: %q %v", name, err)
	}
}

// Launched workers are checked like any backend, once ready: the hello
// worker (PROXY header required) answers the HTTP check through the LOCAL
// header; a wrong expected status makes it ready but unhealthy, and a
// reload of [health] brings it back.
func TestHealthChecksLaunchedWorkers(t *testing.T) {
	// The worker's port comes from below the ephemeral range, so that it
	// can never be the admin's (an ephemeral port) too.
	adm, port := testkit.FreePort(t), testkit.FreePortBase(t, 1, workerPortsLo, workerPortsHi)
	path := filepath.Join(t.TempDir(), "stickyd.toml")
	write := func(status int) {
		t.Helper()
		cfg := fmt.Sprintf("admin = %q\n[workers]\ncommand = [\"stickyd\", \"hello-worker\"]\ncount = 1\nport_base = %d\n"+
			"[health]\ncheck = \"http\"\ninterval = \"100ms\"\nfall = 2\nrise = 1\nexpect_status = %d\n", adm, port, status)
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(204)
	p := startStickyd(t, "--config", path)
	opsWaitState(t, adm, "worker-0", "unhealthy")
	if w := opsBackends(t, adm)["worker-0"]; !w.Ready || w.Healthy {
		t.Errorf("worker-0: %+v, want ready and unhealthy", w)
	}
	if !opsLogged(p, "answered 200, want 204") {
		t.Error("the check did not read the worker's HTTP answer")
	}
	if code, _ := opsDo(t, "GET", adm, "/healthz"); code != 503 {
		t.Errorf("/healthz with the only worker unhealthy: %d", code)
	}
	write(200)
	p.cmd.Process.Signal(syscall.SIGHUP)
	opsWaitState(t, adm, "worker-0", "up")
	if body, err := opsGet(testkit.ClientIP(3), p.addr); err != nil || body != "worker" {
		t.Errorf("through the worker: %q %v", body, err)
	}
}

// Passive ejection is configurable: eject_after failed dials start a
// cool-down of the configured length.
func TestHealthPassiveCooldownConfigurable(t *testing.T) {
	a := testkit.StartBackend(t, "a")
	dead := testkit.FreePort(t)
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", a.Flag(), "--backend", "d="+dead, "--admin", adm,
		"--health-eject-after", "2", "--health-cooldown", "1h")
	ip := opsHomeIP(t, adm, "d", 0)
	for round := 1; round <= 2; round++ {
		if name, _, err := hello(ip, p.addr); err != nil || name != "a" {
			t.Fatalf("round %d: %q %v", round, name, err)
		}
		want := map[int]string{1: "up", 2: "cooldown"}[round]
		if got := opsBackends(t, adm)["d"]; got.State != want || got.DialFailures != int64(round) {
			t.Errorf("after %d failed dials: %+v, want %s", round, got, want)
		}
	}
}
