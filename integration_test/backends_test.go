package integration_test

// Backends that lie, end to end through the stickyd binary: workers that do
// not read the PROXY header (a plain Node HTTP server, python3 -m
// http.server), a black-hole backend, one that accepts and closes at once,
// one that never answers; and an untrusted client whose PROXY header comes
// late.

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// bkLogCount counts stickyd's log lines that contain every snippet.
func bkLogCount(p *proc, snippets ...string) int {
	n := 0
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		ok := true
		for _, s := range snippets {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// bkRequest sends a plain HTTP request from ip and returns what came back
// before the end of the stream.
func bkRequest(t *testing.T, ip, addr string) string {
	t.Helper()
	c := testkit.Dial(t, ip, addr)
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
	got, err := io.ReadAll(c)
	if err != nil && len(got) == 0 {
		t.Logf("request from %s: %v", ip, err) // a reset: also "nothing"
	}
	return string(got)
}

const bkHint = "it likely does not read PROXY headers"

// The naive migration: a plain Node HTTP server behind `stickyd --workers 2
// -- node app.js` with default flags answers 400 to the PROXY v2 header.
// The first request produces one warning naming the worker, the cause and
// both fixes; more requests to that worker do not repeat it.
func TestProxyHintNaiveNodeWorker(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed")
	}
	dir := t.TempDir()
	app := "require('http').createServer((req, res) => res.end('hello\\n')).listen(process.env.PORT)\n"
	if err := os.WriteFile(filepath.Join(dir, "app.js"), []byte(app), 0o644); err != nil {
		t.Fatal(err)
	}
	bkRunHintWorkers(t, dir, "HTTP/1.1 400", "node", "app.js")
}

// A python3 -m http.server worker closes the connection without a byte
// when the PROXY v2 header comes first: the same warning.
func TestProxyHintPythonWorker(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	bkRunHintWorkers(t, t.TempDir(), "", "sh", "-c", `exec python3 -m http.server --bind 127.0.0.1 "$PORT"`)
}

// bkRunHintWorkers launches two workers running argv in dir with default
// flags (the admin API aside, to learn which client IP goes to which
// worker), sends one request per worker and checks the answer (want: its
// prefix, "" for nothing) and the warning.
func bkRunHintWorkers(t *testing.T, dir, want string, argv ...string) {
	t.Helper()
	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	args := append([]string{"--listen", addr, "--log-format", "json", "--admin", adm,
		"--workers", "2", "--"}, argv...)
	p := launch(t, dir, addr, args...)
	for _, w := range []string{"worker-0", "worker-1"} {
		opsWaitState(t, adm, w, "up")
		ip := opsHomeIP(t, adm, w, 0)
		if got := bkRequest(t, ip, p.addr); !strings.HasPrefix(got, want) || want == "" && got != "" {
			t.Fatalf("%s answered %q, want %q...", w, got, want)
		}
		testkit.WaitFor(t, "the PROXY hint for "+w, func() bool {
			return bkLogCount(p, bkHint, `"backend":"`+w+`"`) == 1
		})
		bkRequest(t, ip, p.addr)
	}
	line := ""
	for _, l := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(l, bkHint) {
			line = l
		}
	}
	for _, s := range []string{`"level":"warn"`, "MIGRATING.md", "PROXY-aware server", `send_proxy = \"none\"`,
		"--send-proxy none", `"send_proxy":"v2"`} {
		if !strings.Contains(line, s) {
			t.Errorf("hint %s lacks %q", line, s)
		}
	}
	time.Sleep(200 * time.Millisecond) // the second requests' Done callbacks
	if n := bkLogCount(p, bkHint); n != 2 {
		t.Errorf("%d hint lines for 2 workers and 4 requests, want 2 (one per worker)", n)
	}
}

// A PROXY-aware backend that meets a client's bad request answers 400 too:
// a 400 right after a good answer raises no hint. stickyd judges a
// connection's answer when the connection ends, so each one is let end in
// stickyd before the next starts: otherwise the first 400 could be judged
// before the good answer just before it, with no good answer yet (seen
// once in CI).
func TestProxyHintNotForBadRequests(t *testing.T) {
	ln := testkit.Listen(t, "127.0.0.1:0")
	var tr testkit.Tracked
	tr.Serve(t, ln, func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		if bytes.Contains(buf[:n], []byte("GET /bad")) {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nok\n")
	})
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "app="+tr.Addr(), "--admin", adm)
	for _, path := range []string{"/", "/bad", "/", "/bad"} {
		c := testkit.Dial(t, "127.0.0.1", p.addr)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: app\r\n\r\n", path)
		io.ReadAll(c)
		c.Close()
		testkit.WaitFor(t, "the connection ended in stickyd", func() bool {
			return opsMetric(t, adm, "stickyd_connections_open") == 0
		})
	}
	time.Sleep(200 * time.Millisecond)
	if n := bkLogCount(p, bkHint); n != 0 {
		t.Errorf("%d hint lines for a PROXY-aware backend's 400s", n)
	}
}

// bkRecorder is a backend that records every byte it receives and never
// answers; each connection's bytes are sent on got when it ends.
type bkRecorder struct {
	testkit.Tracked
	got chan []byte
}

func bkStartRecorder(t *testing.T) *bkRecorder {
	t.Helper()
	r := &bkRecorder{got: make(chan []byte, 16)}
	r.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Close()
		r.got <- b
	})
	return r
}

// An untrusted client's PROXY header is refused whenever it arrives: sent
// 0.3 s after connecting (after the handshake's sniff), it used to reach
// the backend as its very first bytes with --send-proxy none.
func TestUntrustedLateProxyHeader(t *testing.T) {
	rec := bkStartRecorder(t)
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "r="+rec.Addr(), "--send-proxy", "none", "--admin", adm)
	c := testkit.Dial(t, "127.0.0.9", p.addr)
	defer c.Close()
	time.Sleep(300 * time.Millisecond)
	fmt.Fprintf(c, "PROXY TCP4 6.6.6.6 127.0.0.1 4444 80\r\nGET / HTTP/1.0\r\n\r\n")
	if got, _ := io.ReadAll(c); len(got) != 0 {
		t.Errorf("client got %q", got)
	}
	if b := testkit.Await(t, rec.got, "the backend connection was not closed"); len(b) != 0 {
		t.Fatalf("the backend received %q", b)
	}
	testkit.WaitFor(t, "the refusal in the log", func() bool { return bkLogCount(p, "connection refused", "PROXY header") == 1 })
	if v := opsMetric(t, adm, `stickyd_header_errors_total{kind="untrusted"}`); v != 1 {
		t.Errorf("header_errors_total{untrusted} = %v, want 1", v)
	}
}

// A black-hole backend: after its cool-down, one probe dial decides
// whether it is back; meanwhile its clients go to their next choice
// instead of each waiting the connect timeout. The figure is the number of
// clients that waited for the black hole (before the fix: all of them).
func TestBlackHoleOneProbePerCooldown(t *testing.T) {
	const clients = 20
	ok := testkit.StartBackend(t, "ok")
	hole := testkit.BlackHole(t)
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", ok.Flag(), "--backend", "hole="+hole, "--admin", adm,
		"--connect-timeout", "3s", "--health-cooldown", "300ms")
	var ips []string
	for i := 0; len(ips) < clients+1; i++ {
		if opsLookup(t, adm, testkit.ClientIP(i)).Home == "hole" {
			ips = append(ips, testkit.ClientIP(i))
		}
		if i > 2000 {
			t.Fatal("too few client IPs with home hole")
		}
	}
	if name, _, err := hello(ips[0], p.addr); err != nil || name != "ok" {
		t.Fatalf("first client: %q %v", name, err) // waited 3s, then the next choice
	}
	opsWaitState(t, adm, "hole", "up") // the cool-down is over: the next dial probes
	var wg sync.WaitGroup
	delays := make(chan time.Duration, clients)
	errs := make(chan error, clients)
	for _, ip := range ips[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			name, _, err := hello(ip, p.addr)
			if err == nil && name != "ok" {
				err = fmt.Errorf("client %s went to %s", ip, name)
			}
			errs <- err
			delays <- time.Since(start)
		}()
	}
	wg.Wait()
	close(errs)
	close(delays)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	waited := 0
	for d := range delays {
		if d >= 2*time.Second {
			waited++
		}
	}
	fails := opsBackends(t, adm)["hole"].DialFailures
	t.Logf("%d of %d clients waited for the black hole's connect timeout; its dial failures: %d", waited, clients, fails)
	if fails > 2 {
		t.Errorf("dial failures of the black hole = %d, want 2 (the first client's and one probe's)", fails)
	}
}

// bkCloser accepts and closes at once: with reset, by RST, a little
// later (a reset that beats stickyd's connect(2) is a failed dial).
func bkCloser(t *testing.T, reset bool) string {
	t.Helper()
	var tr testkit.Tracked
	tr.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) {
		if reset {
			time.Sleep(20 * time.Millisecond)
			c.(*net.TCPConn).SetLinger(0)
		}
		c.Close()
	})
	return tr.Addr()
}

// A backend that accepts and closes (or resets) at once is counted: its
// clients' connections are early closes, three in a row start its
// cool-down, /backends and the metrics show them, and its clients go to
// their next choice.
func TestAcceptAndCloseBackendEjected(t *testing.T) {
	for _, reset := range []bool{false, true} {
		t.Run(fmt.Sprintf("reset=%v", reset), func(t *testing.T) {
			ok := testkit.StartBackend(t, "ok")
			adm := testkit.FreePort(t)
			p := startStickyd(t, "--backend", ok.Flag(), "--backend", "bad="+bkCloser(t, reset), "--admin", adm,
				"--health-cooldown", "1h")
			ip := opsHomeIP(t, adm, "bad", 0)
			for i := range 3 {
				if got := bkRequest(t, ip, p.addr); got != "" {
					t.Fatalf("request %d through the closer got %q", i, got)
				}
				testkit.WaitFor(t, "the early close counted", func() bool { return opsBackends(t, adm)["bad"].EarlyCloses == int64(i+1) })
			}
			if st := opsBackends(t, adm)["bad"]; st.State != "cooldown" || st.DialFailures != 0 {
				t.Errorf("after 3 early closes: %+v, want cooldown", st)
			}
			if v := opsMetric(t, adm, `stickyd_backend_early_closes_total{backend="bad"}`); v != 3 {
				t.Errorf("backend_early_closes_total = %v", v)
			}
			if name, _, err := hello(ip, p.addr); err != nil || name != "ok" {
				t.Errorf("after the cool-down started: %q %v, want ok", name, err)
			}
			if bkLogCount(p, "closed before its first byte; cooling down", `"backend":"bad"`) != 1 {
				t.Errorf("no cool-down line in the log")
			}
		})
	}
}

// Ends that are not the backend's fault do not count: a client that
// closes first, and a client that sends a request and closes before a
// backend that never answers (a sink) closes too.
func TestClientClosesFirstNotCounted(t *testing.T) {
	ok := testkit.StartBackend(t, "ok")
	rec := bkStartRecorder(t)
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", ok.Flag(), "--backend", "sink="+rec.Addr(), "--admin", adm,
		"--send-proxy", "none")
	for i := range 5 {
		c := testkit.Dial(t, opsHomeIP(t, adm, "ok", i*50), p.addr)
		c.Close()
		c = testkit.Dial(t, opsHomeIP(t, adm, "sink", i*50), p.addr)
		fmt.Fprintf(c, "log line %d\n", i)
		c.CloseWrite()
		io.ReadAll(c) // the sink closes once it has read everything
		c.Close()
		<-rec.got
	}
	time.Sleep(200 * time.Millisecond)
	for name, st := range opsBackends(t, adm) {
		if st.EarlyCloses != 0 || st.State != "up" {
			t.Errorf("%s: %+v, want no early close", name, st)
		}
	}
}

// A backend that accepts and never answers holds its client by default
// (documented); with --first-byte-timeout the client is closed at the
// timeout and the backend's counter moves.
func TestSilentBackendFirstByteTimeout(t *testing.T) {
	rec := bkStartRecorder(t)
	t.Run("default holds", func(t *testing.T) {
		p := startStickyd(t, "--backend", "silent="+rec.Addr())
		c := testkit.Dial(t, "127.0.0.1", p.addr)
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); !os.IsTimeout(err) {
			t.Errorf("read: %v, want a timeout (the connection stays open)", err)
		}
	})
	t.Run("first-byte-timeout", func(t *testing.T) {
		adm := testkit.FreePort(t)
		p := startStickyd(t, "--backend", "silent="+rec.Addr(), "--admin", adm, "--first-byte-timeout", "500ms")
		c := testkit.Dial(t, "127.0.0.1", p.addr)
		defer c.Close()
		start := time.Now()
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		if got, err := io.ReadAll(c); len(got) != 0 || err != nil {
			t.Errorf("client got %q %v, want a clean close", got, err)
		}
		if d := time.Since(start); d < 500*time.Millisecond {
			t.Errorf("closed after %v, before the timeout", d)
		}
		testkit.WaitFor(t, "the timeout counted", func() bool { return opsBackends(t, adm)["silent"].FirstByteTimeouts == 1 })
		if v := opsMetric(t, adm, `stickyd_backend_first_byte_timeouts_total{backend="silent"}`); v != 1 {
			t.Errorf("backend_first_byte_timeouts_total = %v", v)
		}
	})
}

// The new settings have their environment twins and config keys.
func TestFirstByteSettingsTwins(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.toml")
	os.WriteFile(path, []byte("first_byte_timeout = \"2s\"\n[[backend]]\naddress = \"127.0.0.1:1\"\n[health]\neject_after_closes = 5\n"), 0o644)
	for env, v := range map[string]string{"STICKYD_FIRST_BYTE_TIMEOUT": "-1s", "STICKYD_HEALTH_EJECT_AFTER_CLOSES": "-1"} {
		cmd := exec.Command(stickydBin, "check-config", path)
		cmd.Env = append(os.Environ(), env+"="+v)
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != 2 || err == nil {
			t.Errorf("%s=%s: exit %d, %s; want exit 2", env, v, cmd.ProcessState.ExitCode(), out)
		}
	}
	cmd := exec.Command(stickydBin, "check-config", path)
	cmd.Env = append(os.Environ(), "STICKYD_FIRST_BYTE_TIMEOUT=1s", "STICKYD_HEALTH_EJECT_AFTER_CLOSES=2")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("valid settings: %v %s", err, out)
	}
}

const bkNoProxyHint = "it may require one"

// The other wrong setup: --send-proxy none in front of servers that
// require a PROXY header, real nginx (stream, `listen ... proxy_protocol`)
// and HAProxy (`bind ... accept-proxy`). Each closes the connection
// without a byte when the request comes first; stickyd says once per
// backend that it may require a header, and how to send one. With
// --send-proxy v2 the same servers answer, and nothing is said.
func TestNoProxyHintForBackendsThatRequireOne(t *testing.T) {
	ln := testkit.Listen(t, "127.0.0.1:0")
	var tr testkit.Tracked
	tr.Serve(t, ln, func(c net.Conn) { // what nginx and HAProxy pass the client to
		defer c.Close()
		io.WriteString(c, "hello\n")
	})
	nginx := startNginx(t, "stream {\n  server {\n    listen %LISTEN% proxy_protocol;\n    proxy_pass "+tr.Addr()+";\n  }\n}\n")
	haproxy := startHAProxyListen(t, "accept-proxy", tr.Addr(), "")
	backends := []string{"--backend", "nginx=" + nginx, "--backend", "haproxy=" + haproxy}

	p := startStickyd(t, append([]string{"--send-proxy", "none", "--log-format", "json"}, backends...)...)
	for _, name := range []string{"nginx", "haproxy"} {
		ip := bkHomeIP(t, backends, name)
		for range 3 {
			if got := bkRequest(t, ip, p.addr); got != "" {
				t.Fatalf("%s answered %q without a PROXY header", name, got)
			}
		}
		testkit.WaitFor(t, "the no-PROXY hint for "+name, func() bool {
			return bkLogCount(p, bkNoProxyHint, `"backend":"`+name+`"`) == 1
		})
	}
	for _, s := range []string{`"level":"warn"`, "nginx proxy_protocol", "HAProxy accept-proxy", "--send-proxy v2",
		`send_proxy = \"v2\"`, `"send_proxy":"none"`, `"answer":"closed"`} {
		if bkLogCount(p, bkNoProxyHint, s) != 2 {
			t.Errorf("hint lines lack %q:\n%s", s, p.stderr.String())
		}
	}

	q := startStickyd(t, append([]string{"--send-proxy", "v2"}, backends...)...)
	for _, name := range []string{"nginx", "haproxy"} {
		if got := bkRequest(t, bkHomeIP(t, backends, name), q.addr); got != "hello\n" {
			t.Errorf("%s behind --send-proxy v2 answered %q, want hello", name, got)
		}
	}
	if n := bkLogCount(q, bkNoProxyHint) + bkLogCount(q, bkHint); n != 0 {
		t.Errorf("%d PROXY hints with --send-proxy v2", n)
	}
}

// bkHomeIP is a client IP that stickyd with these --backend flags sends
// to the backend named name first (stickyd lookup: the same hash).
func bkHomeIP(t *testing.T, backends []string, name string) string {
	t.Helper()
	var ips []string
	for i := range 64 {
		ips = append(ips, testkit.ClientIP(1000+i))
	}
	for ip, b := range lookupOut(t, strings.Join(ips, "\n")+"\n", backends...) {
		if b == name {
			return ip
		}
	}
	t.Fatalf("no client of 64 goes to %s", name)
	return ""
}
