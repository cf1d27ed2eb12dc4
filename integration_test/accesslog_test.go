package integration_test

// The access log behind a real HAProxy: one line per connection, naming
// the client HAProxy's PROXY header gave and the backend `stickyd lookup`
// names for it; logrotate's move and SIGHUP lose no line; the drain's
// last connections are in it when stickyd exits.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// accessEntry is one access log line.
type accessEntry struct {
	Msg      string   `json:"msg"`
	Level    *string  `json:"level"`
	Status   string   `json:"status"`
	Client   string   `json:"client"`
	Peer     string   `json:"peer"`
	Via      string   `json:"via"`
	Backend  string   `json:"backend"`
	BytesIn  int64    `json:"bytes_in"`
	BytesOut int64    `json:"bytes_out"`
	Duration *float64 `json:"duration"`
	End      string   `json:"end"`
}

// readAccess reads an access log file's whole lines.
func readAccess(t *testing.T, path string) []accessEntry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	text = text[:strings.LastIndexByte(text, '\n')+1] // a batch being written may end mid-line
	var out []accessEntry
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line == "" {
			continue
		}
		var e accessEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

func TestAccessLogBehindHAProxy(t *testing.T) {
	requireTool(t, "haproxy")
	const clients = 30
	b0, b1 := testkit.StartBackend(t, "b0"), testkit.StartBackend(t, "b1")
	adm := testkit.FreePort(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	cfgPath := filepath.Join(dir, "stickyd.toml")
	write := func(accessLog string) {
		t.Helper()
		cfg := fmt.Sprintf("admin = %q\naccept_proxy = [\"127.0.0.1/32\"]\ndrain_timeout = \"1s\"\naccess_log = %q\n", adm, accessLog)
		for _, b := range []*testkit.Backend{b0, b1} {
			cfg += fmt.Sprintf("[[backend]]\nname = %q\naddress = %q\n", b.Name, b.Addr())
		}
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(logPath)
	p := startStickyd(t, "--config", cfgPath)
	front := startHAProxy(t, p.addr, "send-proxy-v2")

	// Where lookup sends each client.
	ips := testkit.ClientIPs(clients + 10)
	code, out, stderr := runStickyd(t, dir, nil, "", append([]string{"lookup", "--config", cfgPath}, ips...)...)
	if code != 0 {
		t.Fatalf("lookup: %d %s", code, stderr)
	}
	home := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		ip, name, _ := strings.Cut(line, " ")
		home[ip] = name
	}

	// Each client's connection, by its address (HAProxy's PROXY header
	// names it): the backend that answered.
	visitAll := func(ips []string) map[string]string {
		t.Helper()
		got := make([]string, len(ips))
		self := make([]string, len(ips))
		testkit.Parallel(t, len(ips), 16, func(i int) error {
			name, told, me, err := visit(ips[i], front)
			if err != nil {
				return err
			}
			if told != me {
				return fmt.Errorf("client %s: backend told %s", me, told)
			}
			got[i], self[i] = name, me.String()
			return nil
		})
		m := map[string]string{}
		for i := range ips {
			m[self[i]] = got[i]
		}
		return m
	}
	check := func(path string, visited map[string]string) {
		t.Helper()
		var lines []accessEntry
		read := func() {
			lines = lines[:0]
			for _, e := range readAccess(t, path) {
				if !strings.HasPrefix(e.Client, "127.0.0.1:") { // the harness's probe that HAProxy is up
					lines = append(lines, e)
				}
			}
		}
		// Lines are written in batches, at most 100 ms late.
		testkit.WaitFor(t, "the access log lines", func() bool { read(); return len(lines) >= len(visited) })
		if len(lines) != len(visited) {
			t.Fatalf("%s: %d lines, want %d (one per connection): %+v", path, len(lines), len(visited), lines)
		}
		for _, e := range lines {
			name, ok := visited[e.Client]
			ip, _, _ := net.SplitHostPort(e.Client)
			switch {
			case !ok:
				t.Errorf("a line for %s, which did not connect: %+v", e.Client, e)
			case e.Msg != "connection" || e.Status != "relayed" || e.Via != "proxy-v2" || e.Level != nil || e.Duration == nil:
				t.Errorf("line %+v", e)
			case e.Backend != name || e.Backend != home[ip]:
				t.Errorf("client %s: the line names %s, the backend that answered was %s, lookup says %s", e.Client, e.Backend, name, home[ip])
			case !strings.HasPrefix(e.Peer, "127.0.0.1:"):
				t.Errorf("client %s: peer %s, want HAProxy's", e.Client, e.Peer)
			case e.BytesIn != 0 || e.BytesOut != int64(len(name)+1+len(e.Client)+1):
				t.Errorf("client %s: bytes in %d, out %d", e.Client, e.BytesIn, e.BytesOut)
			}
		}
	}
	first := visitAll(ips[:clients])
	testkit.WaitFor(t, "every connection closed", func() bool { return opsMetric(t, adm, "stickyd_connections_open") == 0 })
	check(logPath, first)

	// logrotate: move the file, SIGHUP. The next connections go to a new
	// file; none is lost or written twice.
	rotated := logPath + ".1"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.WaitFor(t, "config reloaded", func() bool { return opsLogged(p, `"msg":"config reloaded"`) })
	second := visitAll(ips[clients:])
	testkit.WaitFor(t, "every connection closed", func() bool { return opsMetric(t, adm, "stickyd_connections_open") == 0 })
	check(rotated, first)
	check(logPath, second)
	if n := opsMetric(t, adm, "stickyd_access_log_lines_total"); n != clients+10+1 { // and the probe
		t.Errorf("stickyd_access_log_lines_total = %v, want %d", n, clients+10+1)
	}
	if n := opsMetric(t, adm, "stickyd_access_log_lines_dropped_total"); n != 0 {
		t.Errorf("stickyd_access_log_lines_dropped_total = %v", n)
	}

	// A path that cannot be opened: the reload is refused, with the fix,
	// and the log in force goes on.
	write(filepath.Join(dir, "missing", "access.log"))
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.WaitFor(t, "reload rejected", func() bool { return opsLogged(p, "reload rejected") })
	if !opsLogged(p, "the directory "+filepath.Join(dir, "missing")+" is not there") {
		t.Errorf("the rejection does not say what to do:\n%s", p.stderr.String())
	}

	// A connection still open when stickyd stops: cut at the end of the
	// drain, and in the log before stickyd exits.
	held, err := testkit.DialFrom(testkit.ClientIP(clients+20), front)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.Write([]byte("ping\n"))
	testkit.WaitFor(t, "the held connection relayed", func() bool { return opsMetric(t, adm, "stickyd_connections_open") == 1 })
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d", code)
	}
	lines := readAccess(t, logPath)
	if len(lines) != 11 { // the 10 of the second round, and the held one
		t.Fatalf("%d lines after the stop, want 11", len(lines))
	}
	last := lines[10]
	if last.Client != held.LocalAddr().String() || last.Status != "relayed" || last.BytesIn != 5 || !strings.Contains(last.End, "closed at shutdown") {
		t.Errorf("the drained connection's line: %+v", last)
	}
}

// access_log = "stdout": the lines go to stdout, without the level, while
// the main log stays on stderr.
func TestAccessLogStdout(t *testing.T) {
	b := testkit.StartBackend(t, "b0")
	dir := t.TempDir()
	stdout := filepath.Join(dir, "stdout")
	addr := testkit.FreePort(t)
	p := launchVia(t, []string{"sh", "-c", `exec "$0" "$@" >` + stdout}, dir, addr,
		"--listen", addr, "--log-format", "json", "--backend", b.Flag(), "--access-log", "stdout")
	_, _, self, err := visit("127.0.6.1", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the access log line on stdout", func() bool {
		b, _ := os.ReadFile(stdout)
		return strings.Contains(string(b), `"client":"`+self.String()+`"`)
	})
	lines := readAccess(t, stdout)
	if len(lines) != 1 || lines[0].Status != "relayed" || lines[0].Backend != "b0" || lines[0].Level != nil {
		t.Errorf("stdout: %+v", lines)
	}
	if opsLogged(p, `"msg":"connection"`) {
		t.Errorf("an access log line on stderr:\n%s", p.stderr.String())
	}
}

// An access log whose writes fail (a full disk: /dev/full) does not stop
// the proxy, and the lost lines are counted and reported with the error
// and the fix.
func TestAccessLogWriteErrors(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	b := testkit.StartBackend(t, "b0")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", b.Flag(), "--admin", adm, "--access-log", "/dev/full")
	for i := range 5 {
		if name, _, _, err := visit(testkit.ClientIP(i), p.addr); err != nil || name != "b0" {
			t.Fatalf("visit %d: %q %v", i, name, err)
		}
	}
	testkit.WaitFor(t, "the lost lines counted", func() bool {
		return opsMetric(t, adm, "stickyd_access_log_lines_dropped_total") == 5
	})
	p.stop(t, syscall.SIGTERM)
	warn := logsOf[map[string]any](p, "access log lines dropped: writing them failed")
	if len(warn) != 1 || !strings.Contains(fmt.Sprint(warn[0]["write_error"]), "no space left on device") ||
		!strings.Contains(fmt.Sprint(warn[0]["fix"]), "free space") {
		t.Errorf("the loss reported as %v", warn)
	}
}

// Behind a real nginx that sets X-Forwarded-For (header mode), the line
// names the client of the header, with port 0, and how it was learned;
// the refusal of a request without the header has its line too.
func TestAccessLogHeaderModeThroughNginx(t *testing.T) {
	requireTool(t, "nginx", nginxStream)
	logPath := filepath.Join(t.TempDir(), "access.log")
	p := startStickyd(t, "--backend", startHTTPBackend(t, "h0"), "--accept-proxy", "127.0.0.1/32",
		"--client-ip-header", "X-Forwarded-For", "--access-log", logPath)
	front := startNginxForwardedFor(t, p.addr)
	c, err := testkit.DialFrom("127.0.7.9", front)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
	if reply, _ := testkit.ReadAll(t, c); !strings.HasPrefix(reply, "HTTP/1.1 200") {
		t.Fatalf("through nginx: %q", reply)
	}
	c.Close()
	// Straight to stickyd from a trusted hop, without the header: 400.
	d := testkit.Dial(t, "127.0.0.1", p.addr)
	fmt.Fprintf(d, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
	if reply, _ := testkit.ReadAll(t, d); !strings.HasPrefix(reply, "HTTP/1.1 400") {
		t.Fatalf("without the header: %q", reply)
	}
	var relayed, refused *accessEntry
	testkit.WaitFor(t, "both lines", func() bool {
		relayed, refused = nil, nil
		for _, e := range readAccess(t, logPath) {
			switch {
			case e.Client == "127.0.7.9:0":
				relayed = &e
			case e.Status == "http_no_ip":
				refused = &e
			}
		}
		return relayed != nil && refused != nil
	})
	if relayed.Via != "header" || relayed.Status != "relayed" || relayed.Backend != "h0" || !strings.HasPrefix(relayed.Peer, "127.0.0.1:") || relayed.BytesOut == 0 {
		t.Errorf("the relayed request's line: %+v", *relayed)
	}
	if refused.Backend != "" || refused.Via != "socket" || refused.End == "" {
		t.Errorf("the refused request's line: %+v", *refused)
	}
}
