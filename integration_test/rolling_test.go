package integration_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/internal/testkit"
)

// The rolling restart (SIGUSR1) with real Node workers (the stickyd-worker
// package): a new version of the app is deployed while clients keep
// connecting, and none of them is refused or sent to another worker.

// rollingAnswer is one answer of testdata/rolling-app.js.
type rollingAnswer struct {
	version string
	slot    int
	pid     int
	client  string
}

var rollingLine = regexp.MustCompile(`^(\S+) worker (\d+) pid (\d+) client (\S+)\n$`)

// rollingGet GETs path from src through addr on a new connection.
func rollingGet(src, addr, path string) (rollingAnswer, error) {
	c, err := testkit.DialFrom(src, addr)
	if err != nil {
		return rollingAnswer{}, err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: stickyd\r\nConnection: close\r\n\r\n"); err != nil {
		return rollingAnswer{}, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return rollingAnswer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return rollingAnswer{}, err
	}
	m := rollingLine.FindStringSubmatch(string(body))
	if resp.StatusCode != http.StatusOK || m == nil {
		return rollingAnswer{}, fmt.Errorf("status %d, body %q", resp.StatusCode, body)
	}
	slot, _ := strconv.Atoi(m[2])
	pid, _ := strconv.Atoi(m[3])
	return rollingAnswer{m[1], slot, pid, m[4]}, nil
}

// rollingLoad is clients connecting all along, each IP in turn.
type rollingLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	got  []rollingAnswer
	errs []string
}

func startRollingLoad(addr string, ips []string, clients int) *rollingLoad {
	l := &rollingLoad{stop: make(chan struct{})}
	for c := range clients {
		l.wg.Go(func() {
			for i := c; ; i += clients {
				select {
				case <-l.stop:
					return
				default:
				}
				ip := ips[i%len(ips)]
				a, err := rollingGet(ip, addr, "/")
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, ip+": "+err.Error())
				} else {
					l.got = append(l.got, a)
				}
				l.mu.Unlock()
			}
		})
	}
	return l
}

// take stops the load and returns its answers and errors.
func (l *rollingLoad) take() ([]rollingAnswer, []string) {
	close(l.stop)
	l.wg.Wait()
	return l.got, l.errs
}

// rollingDone waits for the end of the rolling restart number n (1-based)
// and returns its line.
func rollingDone(t *testing.T, p *proc, n int) string {
	t.Helper()
	var line string
	testkit.WaitFor(t, "rolling restart "+strconv.Itoa(n)+" ended", func() bool {
		var ends []string
		for _, l := range strings.Split(p.stderr.String(), "\n") {
			if strings.Contains(l, `"msg":"rolling restart done"`) || strings.Contains(l, `"msg":"rolling restart stopped`) {
				ends = append(ends, l)
			}
		}
		if len(ends) >= n {
			line = ends[n-1]
			return true
		}
		return false
	})
	return line
}

// TestRollingRestartNodeWorkers: two Node workers serve v1. While 8
// clients connect without pause from 40 addresses, v2 is deployed and
// stickyd gets SIGUSR1: every request is answered, each address by its
// own worker slot before, during and after; a request in flight on a v1
// worker completes; once the rolling restart is done every answer is v2,
// from new processes, and the old ones are gone. Then a broken deploy:
// its replacement exits at start, the rolling restart stops with the
// reason, and v2 keeps answering everyone. Then one that listens and
// crashes 300 ms later: its slot goes back to the v2 worker.
func TestRollingRestartNodeWorkers(t *testing.T) {
	const n = 2
	base := testkit.FreePortBase(t, 2*n, workerPortsLo, workerPortsHi) // and the replacements'
	cfg, deploy := rollingApp(t, n, base)
	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	p := launch(t, t.TempDir(), addr, "--listen", addr, "--log-format", "json", "--config", cfg, "--admin", adm)
	oldPids := waitWorkersReady(t, p, n)
	ips := testkit.ClientIPs(40)
	homes := lookupHomes(t, cfg, n, ips)
	checkAnswers := func(stage string, got []rollingAnswer, errs []string) {
		t.Helper()
		if len(errs) > 0 {
			t.Errorf("%s: %d requests failed, first: %s", stage, len(errs), errs[0])
		}
		for _, a := range got {
			if "worker-"+strconv.Itoa(a.slot) != homes[a.client] {
				t.Errorf("%s: %s answered by worker %d, its home is %s", stage, a.client, a.slot, homes[a.client])
				return
			}
		}
	}

	// Deploy v2 under load, a slow request in flight on a v1 worker.
	load := startRollingLoad(addr, ips, 8)
	slow := slowGet(ips[0], addr, "/slow", answeredBy("v1", 0))
	time.Sleep(200 * time.Millisecond) // the slow request reaches its v1 worker
	deploy("v2")
	p.cmd.Process.Signal(syscall.SIGUSR1)
	done := rollingDone(t, p, 1)
	after := len(p.stderr.String())
	time.Sleep(300 * time.Millisecond)
	got, errs := load.take()
	if !strings.Contains(done, `"msg":"rolling restart done"`) || !strings.Contains(done, `"replaced":2`) {
		t.Fatalf("rolling restart ended with %s, want done, 2 replaced", done)
	}
	if err := testkit.Await(t, slow, "the slow request did not end"); err != nil {
		t.Errorf("a request in flight on a replaced worker: %v", err)
	}
	checkAnswers("v1 -> v2", got, errs)
	newPids := map[int]int{}
	for _, e := range p.logEntries("worker replaced") {
		newPids[*e.Worker] = e.Pid
	}
	if len(newPids) != n {
		t.Fatalf("worker replaced lines for %d slots, want %d", len(newPids), n)
	}
	var v1, v2 int
	for _, a := range got {
		if a.version == "v1" {
			v1++
		} else {
			v2++
		}
	}
	t.Logf("v1 -> v2: %d requests answered (%d by v1, %d by v2), none failed", len(got), v1, v2)
	if v1 == 0 || v2 == 0 {
		t.Errorf("answers by version: v1 %d, v2 %d; want the load to span the rolling restart", v1, v2)
	}
	for slot, pid := range oldPids {
		testkit.WaitFor(t, "the v1 worker gone", func() bool { return procStat(pid) == nil || procStat(pid)[0] == "Z" })
		if newPids[slot] == pid {
			t.Errorf("worker %d has its old pid %d", slot, pid)
		}
	}
	for _, ip := range ips {
		a, err := rollingGet(ip, addr, "/")
		if err != nil || a.version != "v2" || a.pid != newPids[a.slot] || "worker-"+strconv.Itoa(a.slot) != homes[ip] || a.client != ip {
			t.Fatalf("after the rolling restart, %s got %+v, %v; want v2 from its home %s (pid %d), told its own IP", ip, a, err, homes[ip], newPids[a.slot])
		}
	}
	if strings.Contains(p.stderr.String()[after:], `"msg":"backend dial failed`) || strings.Contains(p.stderr.String(), `"msg":"worker exited"`) {
		t.Errorf("a dial failed or a worker exited (a warning) during the rolling restart")
	}
	// A reload keeps the moved slots where they are, counters and all.
	total := opsBackends(t, adm)["worker-0"].Total
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.WaitFor(t, "config reloaded", func() bool { return opsLogged(p, `"msg":"config reloaded"`) })
	for slot := range n {
		name := "worker-" + strconv.Itoa(slot)
		b := opsBackends(t, adm)[name]
		want := "127.0.0.1:" + strconv.Itoa(base+n+slot)
		if b.Address != want || b.State != "up" {
			t.Errorf("after the rolling restart and a reload, /backends has %s at %s (%s), want %s (up)", name, b.Address, b.State, want)
		}
	}
	if got := opsBackends(t, adm)["worker-0"].Total; got < total {
		t.Errorf("worker-0's connection count fell from %d to %d at the reload", total, got)
	}
	for _, ip := range ips {
		if a, err := rollingGet(ip, addr, "/"); err != nil || a.version != "v2" {
			t.Fatalf("after the reload, %s got %+v, %v", ip, a, err)
		}
	}
	if v := opsMetric(t, adm, `stickyd_worker_replacements_total{worker="worker-0"}`); v != 1 {
		t.Errorf("stickyd_worker_replacements_total for worker-0 = %v, want 1", v)
	}
	if v := opsMetric(t, adm, `stickyd_worker_restarts_total{worker="worker-0"}`); v != 0 {
		t.Errorf("stickyd_worker_restarts_total for worker-0 = %v, want 0", v)
	}

	// A broken deploy: v2 keeps serving.
	load = startRollingLoad(addr, ips, 4)
	deploy("broken")
	p.cmd.Process.Signal(syscall.SIGUSR1)
	done = rollingDone(t, p, 2)
	got, errs = load.take()
	if !strings.Contains(done, "rolling restart stopped") || !strings.Contains(done, "worker-0") ||
		!strings.Contains(done, "exited before it listened (exit code 1)") || !strings.Contains(done, `"fix":`) {
		t.Errorf("a broken deploy's rolling restart ended with %s, want it stopped at worker-0 (exit code 1), with a fix", done)
	}
	if !strings.Contains(p.stderr.String(), "cannot start: this deploy is broken") {
		t.Errorf("the broken replacement's own output is not in the log")
	}
	checkAnswers("broken deploy", got, errs)
	for _, a := range got {
		if a.version != "v2" {
			t.Fatalf("during a broken deploy, %s answered by %s, want v2", a.client, a.version)
		}
	}

	// A deploy that listens, then crashes: its slot goes back to v2. Asked
	// for through the admin API, which answers with the outcome, as a
	// deploy pipeline needs.
	deploy("crashy")
	status, body := opsDo(t, "POST", adm, "/workers/restart")
	var out admin.RollOutcome
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("POST /workers/restart: %d %q: %v", status, body, err)
	}
	done = rollingDone(t, p, 3)
	if !strings.Contains(done, "rolling restart stopped") || !strings.Contains(done, "worker-0: the replacement exited") ||
		!strings.Contains(done, "after it took over (exit code 2); the slot is back on its old worker (pid "+strconv.Itoa(newPids[0])+")") {
		t.Errorf("a crashing deploy's rolling restart ended with %s, want worker-0 back on its old worker", done)
	}
	if status != http.StatusInternalServerError || out.Result != admin.RollFailed || out.Replaced != 0 ||
		!strings.Contains(out.Error, "the slot is back on its old worker") || out.Fix == "" {
		t.Errorf("POST /workers/restart of a crashing deploy: %d %+v, want 500, failed, the reason and a fix", status, out)
	}
	for _, ip := range ips {
		if a, err := rollingGet(ip, addr, "/"); err != nil || a.version != "v2" || a.pid != newPids[a.slot] {
			t.Fatalf("after a crashing deploy, %s got %+v, %v; want v2 from pid %d", ip, a, err, newPids[a.slot])
		}
	}
	// The fixed deploy, through the admin API: 200 once every slot runs it.
	deploy("v5")
	status, body = opsDo(t, "POST", adm, "/workers/restart")
	out = admin.RollOutcome{}
	if err := json.Unmarshal([]byte(body), &out); err != nil || status != http.StatusOK || out.Result != admin.RollDone || out.Replaced != n {
		t.Errorf("POST /workers/restart: %d %q (%v), want 200, done, %d replaced", status, body, err, n)
	}
	for _, ip := range ips {
		if a, err := rollingGet(ip, addr, "/"); err != nil || a.version != "v5" || "worker-"+strconv.Itoa(a.slot) != homes[ip] {
			t.Fatalf("once POST /workers/restart answered, %s got %+v, %v; want v5 from its home %s", ip, a, err, homes[ip])
		}
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("stickyd exit code %d after SIGTERM, want 0", code)
	}
}

// TestRollingRestartWithoutWorkers: SIGUSR1 to a stickyd that launches no
// workers says so, with what the user may have meant, and changes nothing.
func TestRollingRestartWithoutWorkers(t *testing.T) {
	b := testkit.StartBackend(t, "b0")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "b0="+b.Addr(), "--admin", adm)
	if status, body := opsDo(t, "POST", adm, "/workers/restart"); status != http.StatusNotFound || !strings.Contains(body, "launches no workers") {
		t.Errorf("POST /workers/restart without workers: %d %q, want 404 saying there are none", status, body)
	}
	if status, body := opsDo(t, "GET", adm, "/workers"); status != http.StatusNotFound || !strings.Contains(body, "launches no workers") {
		t.Errorf("GET /workers without workers: %d %q, want 404 saying there are none", status, body)
	}
	p.cmd.Process.Signal(syscall.SIGUSR1)
	testkit.WaitFor(t, "the SIGUSR1 warning", func() bool {
		return opsLogged(p, `"msg":"SIGUSR1 restarts launched workers, and this stickyd launches none; nothing done"`)
	})
	if !opsLogged(p, `send SIGHUP`) {
		t.Error("the warning does not point to SIGHUP")
	}
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	defer c.Close()
	if name, _, _ := testkit.Greeting(t, c); name != "b0" {
		t.Errorf("after SIGUSR1, greeted by %q, want b0", name)
	}
}

// TestSocketIORollingRestart: examples/socketio/server.js as 4 workers,
// 100 socket.io clients connected and on the websocket, then a rolling
// restart. Each old worker drains for stop_timeout (a websocket never
// ends by itself) and is then killed; every client reconnects, to the
// new process of its own slot (its home by `stickyd lookup`), and works,
// told its own IP; no session ever mixes processes, and no request meets
// a process that does not know its session.
func TestSocketIORollingRestart(t *testing.T) {
	example := socketIOExample(t)
	server := filepath.Join(example, "server.js")
	const clients = 100
	base := testkit.FreePortBase(t, 2*sioWorkers, workerPortsLo, workerPortsHi)
	cfg := filepath.Join(t.TempDir(), "stickyd.toml")
	conf := fmt.Sprintf("[workers]\ncommand = [\"node\", %q]\ncount = %d\nport_base = %d\nstartup_timeout = \"20s\"\nstop_timeout = \"2s\"\n",
		server, sioWorkers, base)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startStickyd(t, "--config", cfg)
	pids := waitWorkersReady(t, p, sioWorkers)
	ips := testkit.ClientIPs(clients)
	homes := lookupHomes(t, cfg, sioWorkers, ips)
	run := startSIOClients(t, example, "http://"+p.addr, "sticky", ips, 60*time.Second)
	ready := run.next(t, "ready", 30*time.Second)
	for _, c := range ready.Clients {
		if s := c.Session; s == nil || "worker-"+s.Worker != homes[c.IP] || !s.Upgraded {
			t.Fatalf("client %s before the rolling restart: session %+v, want upgraded on its home %s", c.IP, s, homes[c.IP])
		}
	}

	p.cmd.Process.Signal(syscall.SIGUSR1)
	if done := rollingDone(t, p, 1); !strings.Contains(done, `"replaced":4`) {
		t.Fatalf("rolling restart ended with %s", done)
	}
	var old []string
	for _, pid := range pids {
		old = append(old, strconv.Itoa(pid))
	}
	if _, err := fmt.Fprintf(run.stdin, "rolled all %s\n", strings.Join(old, ",")); err != nil {
		t.Fatal(err)
	}
	newPids := map[int]int{}
	for _, e := range p.logEntries("worker replaced") {
		newPids[*e.Worker] = e.Pid
	}
	summary := run.next(t, "summary", 40*time.Second)
	reasons := map[string]int{}
	for _, c := range summary.Clients {
		last := c.Sessions[len(c.Sessions)-1]
		slot, _ := strconv.Atoi(last.Worker)
		if len(c.Sessions) < 2 || "worker-"+last.Worker != homes[c.IP] || last.Pid != newPids[slot] || !last.Upgraded || last.PingsWS == 0 {
			t.Errorf("client %s after the rolling restart: sessions %+v, want its last on its home %s's new pid %d, on the websocket",
				c.IP, c.Sessions, homes[c.IP], newPids[slot])
		}
		for _, s := range c.Sessions {
			if s.Mismatches != 0 || s.ClientIP != c.IP {
				t.Errorf("client %s: session %+v mixed processes or lost its IP", c.IP, s)
			}
		}
		for _, e := range c.Errors {
			if strings.Contains(e, "Session ID unknown") {
				t.Errorf("client %s: %s", c.IP, e)
			}
		}
		for _, d := range c.Disconnects {
			reasons[d.Reason]++
		}
	}
	t.Logf("rolling restart of %d socket.io workers: %d clients disconnected (%s) when their old worker was stopped, and reconnected to their slot's new process; all done %d ms after start",
		sioWorkers, len(summary.Clients), sortedCounts(reasons), summary.Ms)
}

// slowGet GETs path (a slow one) from src through addr in the background;
// the channel gets its error, or check's of its answer.
func slowGet(src, addr, path string, check func(rollingAnswer) error) <-chan error {
	done := make(chan error, 1)
	go func() {
		a, err := rollingGet(src, addr, path)
		if err == nil {
			err = check(a)
		}
		done <- err
	}()
	return done
}

// answeredBy checks that an answer came from version (when not "") and
// from pid (when not 0): the worker the request reached.
func answeredBy(version string, pid int) func(rollingAnswer) error {
	return func(a rollingAnswer) error {
		if version != "" && a.version != version || pid != 0 && a.pid != pid {
			return fmt.Errorf("answered by %s pid %d, want the worker it reached (%s pid %d)", a.version, a.pid, version, pid)
		}
		return nil
	}
}

// rollingApp writes the config of n rolling-app.js workers from port base
// and the app's version file (at v1); deploy writes another version.
func rollingApp(t *testing.T, n, base int) (cfg string, deploy func(v string)) {
	t.Helper()
	return rollingAppAs(t, rollingAppSetup{n: n, base: base})
}

// rollingAppSetup is how rollingAppAs runs rolling-app.js.
type rollingAppSetup struct {
	n, base int
	// command is [workers] command as TOML (default: node and the app);
	// dir its working directory (default: none).
	command, dir string
	// stop is stop_timeout (default 5s); workers, more [workers] lines;
	// env, more [workers.env] lines.
	stop, workers, env string
}

// rollingAppAs is rollingApp as s says.
func rollingAppAs(t *testing.T, s rollingAppSetup) (cfg string, deploy func(v string)) {
	t.Helper()
	modules := filepath.Join(migrateExample(t), "node_modules")
	if s.command == "" {
		s.command = fmt.Sprintf("[\"node\", %q]", rollingAppPath(t))
	}
	if s.stop == "" {
		s.stop = "5s"
	}
	if s.dir != "" {
		s.workers += fmt.Sprintf("dir = %q\n", s.dir)
	}
	version := filepath.Join(t.TempDir(), "VERSION")
	deploy = func(v string) {
		if err := os.WriteFile(version, []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	deploy("v1")
	cfg = filepath.Join(t.TempDir(), "stickyd.toml")
	conf := fmt.Sprintf("[workers]\ncommand = %s\ncount = %d\nport_base = %d\nstartup_timeout = \"20s\"\nstop_timeout = %q\n%s"+
		"[workers.env]\nNODE_PATH = %q\nAPP_VERSION_FILE = %q\n%s", s.command, s.n, s.base, s.stop, s.workers, modules, version, s.env)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, deploy
}

// rollingAppPath is the absolute path of testdata/rolling-app.js.
func rollingAppPath(t *testing.T) string {
	t.Helper()
	app, err := filepath.Abs("testdata/rolling-app.js")
	if err != nil {
		t.Fatal(err)
	}
	return app
}

// TestUpgradeWithWorkers: SIGUSR2 to a stickyd that launched Node workers
// while clients connect without pause. The new process starts its own
// workers beside the old ones (a second version of the app, deployed just
// before, and a new variable in [workers.env]), takes over once they are
// all ready; the old one drains, stops
// its workers and exits 0. No request fails or changes worker slot. The
// new process's rolling restart moves the workers back to the first ports;
// an upgrade whose workers cannot start leaves it serving.
func TestUpgradeWithWorkers(t *testing.T) {
	const n = 2
	base := testkit.FreePortBase(t, 2*n, workerPortsLo, workerPortsHi)
	cfg, deploy := rollingApp(t, n, base)
	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	d := opsStartDaemon(t, addr, "--config", cfg, "--admin", adm)
	testkit.WaitFor(t, "2 workers ready", func() bool { return len(logsIn[logEntry](d.logText(), "worker ready")) == n })
	var oldWorkers []int
	for _, e := range logsIn[logEntry](d.logText(), "worker ready") {
		oldWorkers = append(oldWorkers, e.Pid)
	}
	ips := testkit.ClientIPs(40)
	homes := lookupHomes(t, cfg, n, ips)

	load := startRollingLoad(addr, ips, 6)
	deploy("v2")
	// and a change to [workers], which the new process applies
	conf, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, append(conf, "APP_TAG = \"-tagged\"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	oldPid := d.cmd.Process.Pid
	d.cmd.Process.Signal(syscall.SIGUSR2)
	testkit.WaitFor(t, "the new process serving", func() bool { p := d.pid(); return p != 0 && p != oldPid })
	newPid := d.pid()
	testkit.Await(t, d.exited, "the old process did not exit")
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("old process exit code %d", code)
	}
	time.Sleep(300 * time.Millisecond)
	got, errs := load.take()
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed during the upgrade, first: %s", len(errs), len(errs)+len(got), errs[0])
	}
	versions := map[string]int{}
	for _, a := range got {
		versions[a.version]++
		if "worker-"+strconv.Itoa(a.slot) != homes[a.client] {
			t.Fatalf("during the upgrade, %s answered by worker %d, its home is %s", a.client, a.slot, homes[a.client])
		}
	}
	t.Logf("upgrade with workers: %d requests answered, by version %v, none failed", len(got), versions)
	if versions["v1"] == 0 || versions["v2-tagged"] == 0 || len(versions) != 2 {
		t.Errorf("answers by version %v: want the load to span the upgrade", versions)
	}
	for _, pid := range oldWorkers {
		testkit.WaitFor(t, "the old process's workers gone", func() bool { return opsGone(pid) })
	}
	backends := opsBackends(t, adm)
	for i := range n {
		name := "worker-" + strconv.Itoa(i)
		if want := "127.0.0.1:" + strconv.Itoa(base+n+i); backends[name].Address != want || backends[name].State != "up" {
			t.Errorf("the new process has %s at %s (%s), want %s: the slot's second port", name, backends[name].Address, backends[name].State, want)
		}
	}
	for _, ip := range ips {
		if a, err := rollingGet(ip, addr, "/"); err != nil || a.version != "v2-tagged" || "worker-"+strconv.Itoa(a.slot) != homes[ip] {
			t.Fatalf("after the upgrade, %s got %+v, %v; want v2-tagged from %s", ip, a, err, homes[ip])
		}
	}

	// The new process's rolling restart: back to the first ports.
	syscall.Kill(newPid, syscall.SIGUSR1)
	testkit.WaitFor(t, "the rolling restart done", func() bool { return strings.Contains(d.logText(), `"msg":"rolling restart done"`) })
	if b := opsBackends(t, adm)["worker-0"]; b.Address != "127.0.0.1:"+strconv.Itoa(base) {
		t.Errorf("after a rolling restart, worker-0 at %s, want its first port", b.Address)
	}

	// An upgrade whose workers do not start: the process serves on.
	deploy("broken")
	syscall.Kill(newPid, syscall.SIGUSR2)
	testkit.WaitFor(t, "the failed upgrade", func() bool {
		return strings.Contains(d.logText(), `"msg":"upgrade failed; this process keeps serving"`)
	})
	if !regexp.MustCompile(`upgrade: worker-\d did not start`).MatchString(d.logText()) {
		t.Error("the new process did not say which worker did not start")
	}
	if p := d.pid(); p != newPid {
		t.Errorf("pid file changed to %d after a failed upgrade", p)
	}
	for _, ip := range ips {
		if a, err := rollingGet(ip, addr, "/"); err != nil || a.version != "v2-tagged" {
			t.Fatalf("after a failed upgrade, %s got %+v, %v; want v2-tagged", ip, a, err)
		}
	}

	// An upgrade to a config whose [workers] cannot take over: the new
	// process says why, and this one serves on.
	deploy("v2")
	conf, err = os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(conf), "count = 2", "count = 3", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(newPid, syscall.SIGUSR2)
	testkit.WaitFor(t, "the second failed upgrade", func() bool {
		return strings.Count(d.logText(), `"msg":"upgrade failed; this process keeps serving"`) == 2
	})
	if !strings.Contains(d.logText(), "the running stickyd's workers do not match the new config: they are 2, count is 3; restart instead") {
		t.Error("the new process did not say why it could not take the workers over")
	}
	if p := d.pid(); p != newPid {
		t.Errorf("pid file changed to %d after a failed upgrade", p)
	}
	syscall.Kill(newPid, syscall.SIGTERM)
	testkit.WaitFor(t, "the new process gone", func() bool { return opsGone(newPid) })
}
