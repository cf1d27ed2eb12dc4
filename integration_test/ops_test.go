package integration_test

// Operations: health checks, the admin API and metrics, reload on SIGHUP,
// DNS discovery, the SIGUSR2 upgrade, replicas that agree, the Docker
// build and the deploy configs. Helpers here are prefixed "ops" so that
// they never clash with the other files of the package.

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/discovery/dnstest"
)

// ---- helpers -------------------------------------------------------------

// opsBackendAt starts a testBackend (greeting, then echo) listening on addr.
func opsBackendAt(t *testing.T, name, addr string) *testBackend {
	t.Helper()
	return serveBackend(t, name, listenOn(t, addr))
}

var opsHTTP = &http.Client{Timeout: hangGuard}

// opsDo calls the admin API at adm and returns the status and body.
func opsDo(t *testing.T, method, adm, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+adm+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := opsHTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// opsBackends returns GET /backends by name.
func opsBackends(t *testing.T, adm string) map[string]admin.BackendInfo {
	t.Helper()
	code, body := opsDo(t, "GET", adm, "/backends")
	if code != 200 {
		t.Fatalf("/backends: %d %s", code, body)
	}
	var list []admin.BackendInfo
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("/backends: %v in %s", err, body)
	}
	out := make(map[string]admin.BackendInfo, len(list))
	for _, b := range list {
		out[b.Name] = b
	}
	return out
}

func opsNames(m map[string]admin.BackendInfo) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func opsWaitState(t *testing.T, adm, name, state string) {
	t.Helper()
	waitFor(t, name+" "+state, func() bool { return opsBackends(t, adm)[name].State == state })
}

// opsLookup returns GET /lookup?ip=.
func opsLookup(t *testing.T, adm, ip string) admin.LookupResult {
	t.Helper()
	_, body := opsDo(t, "GET", adm, "/lookup?ip="+ip)
	var r admin.LookupResult
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/lookup: %v in %s", err, body)
	}
	return r
}

// opsHomeIP returns the first client IP (from index from on) whose home
// backend is name.
func opsHomeIP(t *testing.T, adm, name string, from int) string {
	t.Helper()
	for i := from; i < from+500; i++ {
		if opsLookup(t, adm, clientIP(i)).Home == name {
			return clientIP(i)
		}
	}
	t.Fatalf("no client IP has home %s", name)
	return ""
}

// opsEcho checks that a relayed connection still carries bytes both ways.
func opsEcho(t *testing.T, c net.Conn, br *bufio.Reader, msg string) {
	t.Helper()
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != msg+"\n" {
		t.Fatalf("echo of %q: %q %v", msg, line, err)
	}
}

// opsMetric returns the value of one sample line of /metrics, or -1.
func opsMetric(t *testing.T, adm, series string) float64 {
	t.Helper()
	_, body := opsDo(t, "GET", adm, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

func opsLogged(p *proc, snippet string) bool { return strings.Contains(p.stderr.String(), snippet) }

// ---- health checks -------------------------------------------------------

// Active TCP checks open with a PROXY v2 LOCAL header, take a dead backend
// out without any client traffic, and bring it back after rise passes.
func TestHealthTCPEjectsAndRestores(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	adm := freePort(t)
	p := startStickyd(t, "--backend", a.flag(), "--backend", b.flag(), "--admin", adm,
		"--health-check", "tcp", "--health-interval", "100ms", "--health-fall", "2", "--health-rise", "2")
	waitFor(t, "a LOCAL health-check header", func() bool {
		for _, h := range a.headers() {
			if h.Command.IsLocal() {
				return true
			}
		}
		return false
	})
	ip := opsHomeIP(t, adm, "b", 0)
	addr := b.addr()
	b.close()
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
	ln := listenOn(t, "127.0.0.1:0")
	b := &opsHTTPBackend{name: name, addr: ln.Addr().String()}
	b.status.Store(200)
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		b.checks.Add(1)
		w.WriteHeader(int(b.status.Load()))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %s\n", name, r.RemoteAddr) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: hangGuard}
	go srv.Serve(&pp.Listener{Listener: ln}) // REQUIRE: no header, no service
	t.Cleanup(func() { srv.Close() })
	return b
}

// opsGet sends GET / from ip through addr and returns the first word of
// the answer (the backend's name).
func opsGet(ip, addr string) (string, error) {
	d := net.Dialer{Timeout: hangGuard, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(hangGuard))
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
	adm := freePort(t)
	p := startStickyd(t, "--backend", "a="+a.addr, "--backend", "b="+b.addr, "--admin", adm,
		"--health-check", "http", "--health-path", "/ready", "--health-interval", "100ms",
		"--health-fall", "2", "--health-rise", "2")
	waitFor(t, "checks of b", func() bool { return b.checks.Load() >= 2 })
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
	adm, port := freePort(t), freePortBlock(t)
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
	if body, err := opsGet(clientIP(3), p.addr); err != nil || body != "worker" {
		t.Errorf("through the worker: %q %v", body, err)
	}
}

// Passive ejection is configurable: eject_after failed dials start a
// cool-down of the configured length.
func TestHealthPassiveCooldownConfigurable(t *testing.T) {
	a := startBackend(t, "a")
	dead := freePort(t)
	adm := freePort(t)
	p := startStickyd(t, "--backend", a.flag(), "--backend", "d="+dead, "--admin", adm,
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

// ---- admin API -----------------------------------------------------------

func TestAdminEndToEnd(t *testing.T) {
	_, args := fourBackends(t)
	adm := freePort(t)
	p := startStickyd(t, append(args, "--admin", adm)...)
	if code, body := opsDo(t, "GET", adm, "/healthz"); code != 200 || !strings.Contains(body, "4 of 4") {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	ip := opsHomeIP(t, adm, "b1", 0)
	c := dialFrom(t, ip, p.addr)
	defer c.Close()
	name, _, br := greeting(t, c)
	if name != "b1" {
		t.Fatalf("lookup said b1, connection went to %s", name)
	}
	opsEcho(t, c, br, "before drain")
	if got := opsBackends(t, adm)["b1"]; got.Active != 1 || got.Total != 1 || got.Weight != 1 {
		t.Errorf("/backends b1: %+v", got)
	}
	if v := opsMetric(t, adm, `stickyd_backend_connections_active{backend="b1"}`); v != 1 {
		t.Errorf("active metric %v", v)
	}

	if code, body := opsDo(t, "POST", adm, "/backends/b1/drain"); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	if r := opsLookup(t, adm, ip); r.Home != "b1" || r.Backend == "b1" || r.Backend == "" {
		t.Errorf("/lookup while draining: %+v", r)
	}
	if name, _, err := hello(ip, p.addr); err != nil || name == "b1" {
		t.Errorf("new connection while b1 drains: %q %v", name, err)
	}
	opsEcho(t, c, br, "while draining") // the open connection finishes undisturbed
	if code, _ := opsDo(t, "POST", adm, "/backends/b1/enable"); code != 200 {
		t.Fatal("enable")
	}
	if name, _, err := hello(ip, p.addr); err != nil || name != "b1" {
		t.Errorf("after enable: %q %v", name, err)
	}
	c.Close()
	waitFor(t, "b1 idle", func() bool { return opsBackends(t, adm)["b1"].Active == 0 })
	if v := opsMetric(t, adm, `stickyd_bytes_total{direction="in"}`); v < float64(len("before drain\nwhile draining\n")) {
		t.Errorf("bytes in = %v", v)
	}

	for _, n := range []string{"b0", "b1", "b2", "b3"} {
		opsDo(t, "POST", adm, "/backends/"+n+"/drain")
	}
	if code, _ := opsDo(t, "GET", adm, "/healthz"); code != 503 {
		t.Errorf("/healthz with every backend draining: %d", code)
	}
	if _, _, err := hello(ip, p.addr); err == nil {
		t.Error("a client was served with every backend draining")
	}
	waitFor(t, "the refusal counted", func() bool {
		return opsMetric(t, adm, `stickyd_connections_rejected_total{reason="no_backend"}`) >= 1
	})
	if code, _ := opsDo(t, "POST", adm, "/backends/nope/drain"); code != 404 {
		t.Errorf("drain of an unknown backend: %d", code)
	}
}

// ---- reload --------------------------------------------------------------

func TestReloadSIGHUP(t *testing.T) {
	b0, b1, b2 := startBackend(t, "b0"), startBackend(t, "b1"), startBackend(t, "b2")
	adm := freePort(t)
	path := filepath.Join(t.TempDir(), "stickyd.toml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	table := func(b *testBackend, weight int) string {
		return fmt.Sprintf("[[backend]]\nname = %q\naddress = %q\nweight = %d\n", b.name, b.addr(), weight)
	}
	write(fmt.Sprintf("admin = %q\n", adm) + table(b0, 1) + table(b1, 1))
	p := startStickyd(t, "--config", path)
	ip := opsHomeIP(t, adm, "b0", 0)
	c := dialFrom(t, ip, p.addr)
	defer c.Close()
	name, _, br := greeting(t, c)
	if name != "b0" {
		t.Fatalf("held connection went to %s", name)
	}

	write(fmt.Sprintf("admin = %q\nengine = \"goroutine\"\n", adm) + table(b0, 3) + table(b2, 1))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "config reloaded", func() bool { return opsLogged(p, `"msg":"config reloaded"`) })
	if !opsLogged(p, `"keys":["engine"]`) {
		t.Error("the engine change was not logged as ignored")
	}
	got := opsBackends(t, adm)
	if names := opsNames(got); !slices.Equal(names, []string{"b0", "b2"}) || got["b0"].Weight != 3 {
		t.Fatalf("after reload: %+v", got)
	}
	if got["b0"].Active != 1 || got["b0"].Total != 1 {
		t.Errorf("b0 lost its connection state across the reload: %+v", got["b0"])
	}
	opsEcho(t, c, br, "still here")
	names := make([]string, 100)
	helloAll(t, p.addr, names)
	for i, n := range names {
		if n != "b0" && n != "b2" {
			t.Fatalf("client %d went to %s after reload", i, n)
		}
	}

	write(fmt.Sprintf("admin = %q\n\nsend_proxy = \"v9\"\n", adm) + table(b1, 1))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "reload rejected", func() bool { return opsLogged(p, `"msg":"reload rejected; the running config stays in force"`) })
	if !opsLogged(p, `line 3: key \"send_proxy\"`) {
		t.Errorf("the rejection does not name the key and line:\n%s", p.stderr.String())
	}
	if names := opsNames(opsBackends(t, adm)); !slices.Equal(names, []string{"b0", "b2"}) {
		t.Errorf("the invalid config replaced the backends: %v", names)
	}
	if name, _, err := hello(ip, p.addr); err != nil || name != "b0" {
		t.Errorf("after a rejected reload: %q %v", name, err)
	}
}

// ---- DNS discovery -------------------------------------------------------

func opsStartDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// opsSamePort starts backends on 127.0.0.2 and 127.0.0.3 with one port, as
// the pods of a headless Service are.
func opsSamePort(t *testing.T) (port string, b2, b3 *testBackend) {
	t.Helper()
	for range 20 {
		b2 = opsBackendAt(t, "pod2", "127.0.0.2:0")
		_, port, _ = net.SplitHostPort(b2.addr())
		ln, err := net.Listen("tcp", "127.0.0.3:"+port)
		if err != nil {
			b2.close()
			continue
		}
		return port, b2, serveBackend(t, "pod3", ln)
	}
	t.Fatal("no port free on both 127.0.0.2 and 127.0.0.3")
	return
}

// A name with a port is followed as it scales up and down; established
// connections to an address that left stay up; a DNS outage keeps the last
// answer.
func TestDNSDiscoveryFollowsScaling(t *testing.T) {
	dns := opsStartDNS(t)
	port, _, _ := opsSamePort(t)
	dns.SetHost("app.test.", "127.0.0.2")
	adm := freePort(t)
	p := startStickyd(t, "--backend", "dns:app.test:"+port, "--dns-server", dns.Addr,
		"--dns-interval", "100ms", "--admin", adm)
	pod2, pod3 := "127.0.0.2:"+port, "127.0.0.3:"+port
	if names := opsNames(opsBackends(t, adm)); !slices.Equal(names, []string{pod2}) {
		t.Fatalf("backends %v, want [%s]", names, pod2)
	}
	ip := clientIP(0)
	c := dialFrom(t, ip, p.addr)
	defer c.Close()
	name, _, br := greeting(t, c)
	if name != "pod2" {
		t.Fatalf("went to %s", name)
	}

	dns.SetHost("app.test.", "127.0.0.3", "127.0.0.2")
	waitFor(t, "scale up to two", func() bool { return len(opsBackends(t, adm)) == 2 })
	names := make([]string, 100)
	helloAll(t, p.addr, names)
	count := map[string]int{}
	for i, n := range names {
		count[n]++
		if home := opsLookup(t, adm, clientIP(i)).Home; (home == pod2) != (n == "pod2") {
			t.Fatalf("client %d went to %s, lookup says %s", i, n, home)
		}
	}
	if count["pod2"] == 0 || count["pod3"] == 0 {
		t.Errorf("clients after scale-up: %v", count)
	}

	dns.SetHost("app.test.", "127.0.0.3")
	waitFor(t, "scale down to pod3", func() bool { return slices.Equal(opsNames(opsBackends(t, adm)), []string{pod3}) })
	opsEcho(t, c, br, "pod2 left DNS but this connection stays")
	helloAll(t, p.addr, names)
	for i, n := range names {
		if n != "pod3" {
			t.Fatalf("client %d went to %s after scale-down", i, n)
		}
	}

	q := dns.Queries()
	dns.SetHost("app.test.") // NXDOMAIN
	waitFor(t, "failed resolutions", func() bool { return dns.Queries() > q+6 })
	if names := opsNames(opsBackends(t, adm)); !slices.Equal(names, []string{pod3}) {
		t.Errorf("a DNS failure changed the backends: %v", names)
	}
	if !opsLogged(p, "keeping its last addresses") {
		t.Error("the DNS failure was not logged")
	}
}

// SRV names give each target its own port; replicas name the backends
// alike, and `stickyd lookup` resolves them too.
func TestDNSDiscoverySRV(t *testing.T) {
	dns := opsStartDNS(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	port := func(tb *testBackend) uint16 {
		n, _ := strconv.Atoi(tb.addr()[strings.LastIndexByte(tb.addr(), ':')+1:])
		return uint16(n)
	}
	dns.SetSRV("_app._tcp.test.", dnstest.Target{Host: "a.test.", Port: port(a)}, dnstest.Target{Host: "b.test.", Port: port(b)})
	dns.SetHost("a.test.", "127.0.0.1")
	dns.SetHost("b.test.", "127.0.0.1")
	dir := t.TempDir()
	cfg := fmt.Sprintf("dns_server = %q\ndns_interval = \"1s\"\n[[backend]]\ndns = \"_app._tcp.test\"\n", dns.Addr)
	path := filepath.Join(dir, "stickyd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	adm := freePort(t)
	p := startStickyd(t, "--config", path, "--admin", adm)
	want := []string{a.addr(), b.addr()}
	slices.Sort(want)
	if names := opsNames(opsBackends(t, adm)); !slices.Equal(names, want) {
		t.Fatalf("backends %v, want the two SRV targets", names)
	}
	names := make([]string, 60)
	helloAll(t, p.addr, names)
	lookup := opsRunLookup(t, []string{"--config", path}, 60)
	byAddr := map[string]string{a.addr(): "a", b.addr(): "b"}
	for i, n := range names {
		if byAddr[lookup[i]] != n {
			t.Fatalf("client %d: stickyd lookup says %s, connection went to %s", i, lookup[i], n)
		}
	}
	if !slices.Contains(names, "a") || !slices.Contains(names, "b") {
		t.Errorf("clients: %v", names)
	}
}

// ---- scale-out -----------------------------------------------------------

// opsRunLookup runs `stickyd lookup args` for clientIP(0..n-1) on stdin and
// returns the backend name per IP.
func opsRunLookup(t *testing.T, args []string, n int) []string {
	t.Helper()
	var in strings.Builder
	for i := range n {
		in.WriteString(clientIP(i) + "\n")
	}
	cmd := exec.Command(stickydBin, append([]string{"lookup"}, args...)...)
	cmd.Dir = t.TempDir()
	cmd.Stdin = strings.NewReader(in.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("stickyd lookup: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != n {
		t.Fatalf("lookup printed %d lines, want %d", len(lines), n)
	}
	names := make([]string, n)
	for i, l := range lines {
		ip, name, _ := strings.Cut(l, " ")
		if ip != clientIP(i) {
			t.Fatalf("lookup line %d: %q", i, l)
		}
		names[i] = name
	}
	return names
}

// Two replicas given the same backends in different orders send each of
// 1000 client IPs to the same backend, and `stickyd lookup` agrees.
func TestReplicasAgree(t *testing.T) {
	bs, args := fourBackends(t)
	var shuffled []string
	for _, i := range []int{2, 0, 3, 1} {
		shuffled = append(shuffled, "--backend", bs[i].flag())
	}
	p1, p2 := startStickyd(t, args...), startStickyd(t, shuffled...)
	const clients = 1000
	n1, n2 := make([]string, clients), make([]string, clients)
	helloAll(t, p1.addr, n1)
	helloAll(t, p2.addr, n2)
	for i := range clients {
		if n1[i] != n2[i] {
			t.Fatalf("client %s: replica 1 sent it to %s, replica 2 to %s", clientIP(i), n1[i], n2[i])
		}
	}
	l1, l2 := opsRunLookup(t, args, clients), opsRunLookup(t, shuffled, clients)
	if !slices.Equal(l1, l2) {
		t.Fatal("stickyd lookup differs between the two orders")
	}
	if !slices.Equal(l1, n1) {
		t.Fatal("stickyd lookup differs from where connections went")
	}
}

// ---- upgrade -------------------------------------------------------------

// opsDaemon is a stickyd started with its log in a file (so that the
// process it hands over to, which inherits the log, does not hold a pipe
// of the test open).
type opsDaemon struct {
	cmd     *exec.Cmd
	log     string
	pidFile string
	exited  chan struct{}
}

func opsStartDaemon(t *testing.T, addr string, args ...string) *opsDaemon {
	t.Helper()
	dir := t.TempDir()
	d := &opsDaemon{log: filepath.Join(dir, "stickyd.log"), pidFile: filepath.Join(dir, "stickyd.pid"), exited: make(chan struct{})}
	f, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.cmd = exec.Command(stickydBin, append([]string{"--listen", addr, "--log-format", "json", "--pid-file", d.pidFile}, args...)...)
	d.cmd.Dir = dir
	d.cmd.Stdout, d.cmd.Stderr = f, f
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.exited
		if pid := d.pid(); pid != 0 && pid != d.cmd.Process.Pid && opsIsStickyd(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("stickyd log:\n%s", b)
		}
	})
	waitFor(t, "stickyd serving", func() bool { return d.pid() == d.cmd.Process.Pid })
	return d
}

// pid returns the pid in the pid file, or 0.
func (d *opsDaemon) pid() int {
	b, err := os.ReadFile(d.pidFile)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func (d *opsDaemon) logText() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

func opsIsStickyd(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), stickydBin)
}

// opsGone reports whether pid has exited (a zombie counts as gone).
func opsGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

// opsStream connects from ever new client IPs until stop, counting
// successes and failures.
type opsStream struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	stop       chan struct{}
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

func opsStartStream(addr string, loops int) *opsStream {
	s := &opsStream{stop: make(chan struct{})}
	for k := range loops {
		s.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-s.stop:
					return
				default:
				}
				if err := opsPing(clientIP(1000+k*100000+i), addr); err != nil {
					s.failed.Add(1)
					s.firstErr.CompareAndSwap(nil, err)
				} else {
					s.ok.Add(1)
				}
			}
		})
	}
	return s
}

// opsPing connects from ip, speaks first (so that stickyd does not wait
// for a server-speaks-first greeting), and checks the greeting and the echo.
func opsPing(ip, addr string) error {
	d := net.Dialer{Timeout: hangGuard, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(hangGuard))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	greet, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("client %s: greeting: %w (got %q)", ip, err, greet)
	}
	if echo, err := br.ReadString('\n'); err != nil || echo != "ping\n" {
		return fmt.Errorf("client %s: echo %q: %v", ip, echo, err)
	}
	return nil
}

func (s *opsStream) finish() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.wg.Wait()
}

// SIGUSR2 hands the listening socket to a new process; clients connecting
// all along are served, the old process drains its open connection and
// exits 0, and the new one can be upgraded again.
func TestUpgradeSIGUSR2(t *testing.T) {
	_, args := fourBackends(t)
	addr, adm := freePort(t), freePort(t)
	d := opsStartDaemon(t, addr, append(args, "--admin", adm, "--drain-timeout", "20s")...)
	oldPid := d.cmd.Process.Pid
	held := dialFrom(t, clientIP(0), addr)
	defer held.Close()
	_, _, br := greeting(t, held)

	s := opsStartStream(addr, 3)
	defer s.finish()
	waitFor(t, "the stream flowing", func() bool { return s.ok.Load() > 200 })
	d.cmd.Process.Signal(syscall.SIGUSR2)
	waitFor(t, "the new process serving", func() bool { p := d.pid(); return p != 0 && p != oldPid })
	newPid := d.pid()
	opsEcho(t, held, br, "old process still relays me")
	select {
	case <-d.exited:
		t.Fatal("the old process exited with a connection open")
	default:
	}
	held.Close()
	select {
	case <-d.exited:
	case <-time.After(hangGuard):
		t.Fatal("the old process did not exit after its last connection closed")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("old process exit code %d", code)
	}
	n := s.ok.Load()
	waitFor(t, "the new process serving the stream", func() bool { return s.ok.Load() > n+300 })
	if code, _ := opsDo(t, "GET", adm, "/healthz"); code != 200 {
		t.Errorf("the admin listener was not handed over: %d", code)
	}

	syscall.Kill(newPid, syscall.SIGUSR2) // and again, from the inherited socket
	waitFor(t, "a third process serving", func() bool { p := d.pid(); return p != 0 && p != newPid })
	waitFor(t, "the second process gone", func() bool { return opsGone(newPid) })
	n = s.ok.Load()
	waitFor(t, "the third process serving the stream", func() bool { return s.ok.Load() > n+300 })
	s.finish()
	if f := s.failed.Load(); f != 0 {
		t.Errorf("%d of %d clients failed during the upgrades; first: %v", f, f+s.ok.Load(), s.firstErr.Load())
	}
	t.Logf("%d clients served across two upgrades", s.ok.Load())
	if !strings.Contains(d.logText(), `"msg":"upgrade: new process ready"`) {
		t.Error("no upgrade line in the log")
	}
}

// A new process that cannot start (here: the config became invalid) is
// reported, and the old one keeps serving.
func TestUpgradeFailureKeepsServing(t *testing.T) {
	a := startBackend(t, "a")
	path := filepath.Join(t.TempDir(), "stickyd.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("[[backend]]\nname = \"a\"\naddress = %q\n", a.addr())), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	d := opsStartDaemon(t, addr, "--config", path)
	if err := os.WriteFile(path, []byte("send_proxy = \"v9\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGUSR2)
	waitFor(t, "the failure", func() bool {
		return strings.Contains(d.logText(), `"msg":"upgrade failed; this process keeps serving"`)
	})
	if err := opsPing(clientIP(0), addr); err != nil {
		t.Fatalf("after a failed upgrade: %v", err)
	}
	if p := d.pid(); p != d.cmd.Process.Pid {
		t.Errorf("pid file changed to %d", p)
	}
}

// With [workers] an upgrade is refused and the process keeps serving.
func TestUpgradeRefusedWithWorkers(t *testing.T) {
	dir := t.TempDir()
	base := freePortBlock(t)
	path := filepath.Join(dir, "stickyd.toml")
	cfg := fmt.Sprintf("[workers]\ncommand = [\"stickyd\", \"hello-worker\"]\ncount = 1\nport_base = %d\n", base)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	d := opsStartDaemon(t, addr, "--config", path)
	d.cmd.Process.Signal(syscall.SIGUSR2)
	waitFor(t, "the refusal", func() bool { return strings.Contains(d.logText(), "upgrade with [workers] is not supported") })
	if p := d.pid(); p != d.cmd.Process.Pid {
		t.Errorf("pid file changed to %d", p)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(hangGuard):
		t.Fatal("no exit after SIGTERM")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// freePortBlock returns a free loopback port for one worker.
func freePortBlock(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(freePort(t))
	n, _ := strconv.Atoi(port)
	return n
}

// ---- flags and environment -----------------------------------------------

// Every new flag has an environment twin, and a bad value is an error
// naming the flag (exit 2).
func TestOpsEnvTwinsValidated(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.toml")
	os.WriteFile(path, []byte("[[backend]]\naddress = \"127.0.0.1:1\"\n"), 0o644)
	bad := map[string]string{
		"STICKYD_HEALTH_CHECK": "icmp", "STICKYD_HEALTH_INTERVAL": "1ms", "STICKYD_HEALTH_TIMEOUT": "1h",
		"STICKYD_HEALTH_RISE": "-1", "STICKYD_HEALTH_FALL": "-1", "STICKYD_HEALTH_PATH": "nope",
		"STICKYD_HEALTH_EXPECT_STATUS": "7", "STICKYD_HEALTH_SEND_PROXY": "v7", "STICKYD_HEALTH_COOLDOWN": "-1s",
		"STICKYD_HEALTH_EJECT_AFTER": "-1", "STICKYD_DNS_SERVER": "nope", "STICKYD_DNS_INTERVAL": "1ms",
	}
	for env, v := range bad {
		flag := "--" + strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(env, "STICKYD_")), "_", "-")
		cmd := exec.Command(stickydBin, "check-config", path)
		cmd.Env = append(os.Environ(), env+"="+v)
		out, err := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); err == nil || code != 2 || !strings.Contains(string(out), flag) {
			t.Errorf("%s=%s: exit %d, output %q; want exit 2 naming %s", env, v, code, out, flag)
		}
	}
	cmd := exec.Command(stickydBin, "check-config", path)
	cmd.Env = append(os.Environ(), "STICKYD_HEALTH_CHECK=http", "STICKYD_HEALTH_PATH=/ready",
		"STICKYD_HEALTH_INTERVAL=1s", "STICKYD_DNS_SERVER=127.0.0.1:53", "STICKYD_PID_FILE="+filepath.Join(dir, "pid"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("valid environment: %v %s", err, out)
	}
}

// ---- Docker and deploy ---------------------------------------------------

// opsWords splits a shell command line into words, honouring double and
// single quotes (enough for a Dockerfile RUN line and test.sh).
func opsWords(s string) []string {
	var words []string
	var cur strings.Builder
	var quote rune
	inWord := false
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// opsBuildLine finds the `go build` command in a file: its environment
// assignments and its argv.
func opsBuildLine(t *testing.T, path, prefix string) (env, argv []string) {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(src), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix)
		if !ok {
			continue
		}
		words := opsWords(rest)
		var assigns []string
		for len(words) > 0 && strings.Contains(words[0], "=") {
			assigns, words = append(assigns, words[0]), words[1:]
		}
		if len(words) >= 2 && words[0] == "go" && words[1] == "build" {
			return assigns, words
		}
	}
	t.Fatalf("%s: no %q line with go build", path, prefix)
	return nil, nil
}

// The Dockerfile builds what the tests build (test.sh: go build -o stickyd
// .), only static and trimmed; built with exactly its command and
// environment, the binary has no interpreter and no shared library.
func TestDockerfileBuildsStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("a full build: skipped with -short")
	}
	env, argv := opsBuildLine(t, "../Dockerfile", "RUN ")
	_, testArgv := opsBuildLine(t, "../test.sh", "")
	if want := []string{"go", "build", "-o", "stickyd", "."}; !slices.Equal(testArgv, want) {
		t.Fatalf("test.sh builds with %q, want %q", testArgv, want)
	}
	if !slices.Contains(env, "CGO_ENABLED=0") {
		t.Errorf("Dockerfile build environment %q lacks CGO_ENABLED=0", env)
	}
	// Same command as test.sh, plus only flags that do not change behaviour.
	var rest []string
	for i := 2; i < len(argv); i++ {
		switch argv[i] {
		case "-trimpath":
		case "-ldflags":
			if i+1 >= len(argv) || strings.Trim(argv[i+1], "-sw ") != "" {
				t.Errorf("Dockerfile -ldflags %q: only -s -w expected", argv[i+1:])
			}
			i++
		default:
			rest = append(rest, argv[i])
		}
	}
	if !slices.Equal(argv[:2], []string{"go", "build"}) || !slices.Equal(rest, testArgv[2:]) {
		t.Fatalf("Dockerfile builds with %q, test.sh with %q", argv, testArgv)
	}

	out := filepath.Join(t.TempDir(), "stickyd")
	build := slices.Clone(argv)
	build[slices.Index(build, "-o")+1] = out // the only change: where the binary goes
	cmd := exec.Command(build[0], build[1:]...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), env...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v\n%s", strings.Join(env, " "), build, err, msg)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("binary has a %v program header: not static", p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("binary needs %q (%v)", libs, err)
	}
	if v, err := exec.Command(out, "version").Output(); err != nil || !strings.HasPrefix(string(v), "stickyd ") {
		t.Errorf("the static binary does not run: %q %v", v, err)
	}
}

// The image runs as non-root, reads /etc/stickyd/config.toml, exposes the
// proxy and admin ports and stops on SIGTERM.
func TestDockerfileRuntimeStage(t *testing.T) {
	src, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages := strings.Split(string(src), "\nFROM ")
	final := stages[len(stages)-1]
	has := func(re string) bool { return strings.Contains(final, re) }
	for _, want := range []string{"STOPSIGNAL SIGTERM", "/etc/stickyd/config.toml", "EXPOSE 3000 9000"} {
		if !has(want) {
			t.Errorf("final stage lacks %q", want)
		}
	}
	user := ""
	for _, line := range strings.Split(final, "\n") {
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), "USER "); ok {
			user = u
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0") {
		t.Errorf("final stage runs as %q, want a non-root user", user)
	}
}

// The stickyd configs under deploy/ are valid, and so is the HAProxy
// config (when haproxy is installed).
func TestOpsDeployConfigsValid(t *testing.T) {
	tomls, _ := filepath.Glob("../deploy/*/*.toml")
	if len(tomls) < 2 {
		t.Fatalf("deploy configs: %v", tomls)
	}
	for _, path := range tomls {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(f)
		f.Close()
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
	k8s, err := os.ReadFile("../deploy/kubernetes/stickyd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`service.beta.kubernetes.io/aws-load-balancer-type: "nlb"`,
		`service.beta.kubernetes.io/aws-load-balancer-proxy-protocol: "*"`,
		"type: LoadBalancer",
	} {
		if !bytes.Contains(k8s, []byte(want)) {
			t.Errorf("stickyd.yaml lacks %q", want)
		}
	}
	if app, _ := os.ReadFile("../deploy/kubernetes/app.yaml"); !bytes.Contains(app, []byte("clusterIP: None")) {
		t.Error("app.yaml: the workers' Service is not headless")
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Log("haproxy not installed: its config is not checked")
		return
	}
	if out, err := exec.Command(haproxy, "-c", "-f", "../deploy/compose/haproxy.cfg").CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
}
