package integration_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// Worker ports come from 10000-19999: below the ephemeral range, and apart
// from the backend package's tests (20000-29999), which may run at the
// same time.
const workerPortsLo, workerPortsHi = 10000, 20000

// Launched workers, end to end through the stickyd binary: the built-in
// hello worker behind `--workers N -- stickyd hello-worker`, the repo's own
// config.toml, and what is left of the workers when stickyd dies. The
// socket.io workers are in socketio_test.go.

// writeWorkersConfig writes a config file with a [workers] table (command,
// port_base, short stop timeout) and returns its path. The count comes from
// --workers.
func writeWorkersConfig(t *testing.T, portBase int, command ...string) string {
	t.Helper()
	quoted := make([]string, len(command))
	for i, s := range command {
		quoted[i] = strconv.Quote(s)
	}
	path := filepath.Join(t.TempDir(), "workers.toml")
	content := fmt.Sprintf("[workers]\ncommand = [%s]\nport_base = %d\nstartup_timeout = \"20s\"\nstop_timeout = \"5s\"\n",
		strings.Join(quoted, ", "), portBase)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// logEntry is one JSON log line of stickyd.
type logEntry struct {
	Msg    string `json:"msg"`
	TS     string `json:"ts"` // RFC 3339
	Worker *int   `json:"worker"`
	Pid    int    `json:"pid"`
	Exit   *int   `json:"exit_code"`
}

// logEntries returns stickyd's log lines with message msg.
func (p *proc) logEntries(msg string) []logEntry { return logsOf[logEntry](p, msg) }

// readyWorkers returns, per worker slot, the latest "worker ready" entry.
func (p *proc) readyWorkers() map[int]logEntry {
	ready := map[int]logEntry{}
	for _, e := range p.logEntries("worker ready") {
		if e.Worker != nil {
			ready[*e.Worker] = e
		}
	}
	return ready
}

// waitWorkersReady waits until n worker slots have been ready and returns
// their pids by slot.
func waitWorkersReady(t *testing.T, p *proc, n int) map[int]int {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("%d workers ready", n), func() bool { return len(p.readyWorkers()) == n })
	pids := map[int]int{}
	for slot, e := range p.readyWorkers() {
		pids[slot] = e.Pid
	}
	return pids
}

// lookupHomes asks `stickyd lookup` for each IP's home worker under the
// config at cfgPath with n workers, keyed by IP.
func lookupHomes(t *testing.T, cfgPath string, n int, ips []string) map[string]string {
	t.Helper()
	args := append([]string{"lookup", "--config", cfgPath, "--workers", strconv.Itoa(n)}, ips...)
	out, err := exec.Command(stickydBin, args...).Output()
	if err != nil {
		t.Fatalf("stickyd lookup: %v", err)
	}
	homes := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		ip, name, _ := strings.Cut(line, " ")
		homes[ip] = name
	}
	if len(homes) != len(ips) {
		t.Fatalf("stickyd lookup answered %d of %d IPs:\n%s", len(homes), len(ips), out)
	}
	return homes
}

// procStat returns the fields of /proc/<pid>/stat after the command name:
// state, ppid, pgrp, ...; nil when the process does not exist.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return strings.Fields(after)
}

// procGone reports whether pid no longer runs (absent, or a zombie).
func procGone(pid int) bool {
	st := procStat(pid)
	return len(st) == 0 || st[0] == "Z"
}

// liveProcs returns the running processes whose parent is ppid or whose
// process group is one of pgids.
func liveProcs(ppid int, pgids map[int]bool) []int {
	return procsWhere(func(zombie bool, parent, group int) bool { return !zombie && (parent == ppid || pgids[group]) })
}

// procsWhere returns the processes for which keep, told whether each is
// a zombie, its parent and its process group, is true.
func procsWhere(keep func(zombie bool, parent, group int) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st := procStat(pid)
		if len(st) < 3 {
			continue
		}
		parent, _ := strconv.Atoi(st[1])
		group, _ := strconv.Atoi(st[2])
		if keep(st[0] == "Z", parent, group) {
			out = append(out, pid)
		}
	}
	return out
}

// workerGroups returns the process groups of stickyd's children: each
// worker leads its own.
func workerGroups(t *testing.T, p *proc, n int) map[int]bool {
	t.Helper()
	kids := liveProcs(p.cmd.Process.Pid, nil)
	if len(kids) != n {
		t.Fatalf("stickyd has %d child processes %v, want %d workers", len(kids), kids, n)
	}
	groups := map[int]bool{}
	for _, pid := range kids {
		groups[pid] = true
	}
	return groups
}

// httpGetFrom sends one GET / on a new connection from src and returns the
// body.
func httpGetFrom(t *testing.T, src, addr string) string {
	t.Helper()
	c := testkit.Dial(t, src, addr)
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: stickyd\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatalf("GET from %s: %v", src, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET from %s: %v", src, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET from %s: status %d body %q err %v", src, resp.StatusCode, body, err)
	}
	return string(body)
}

var helloLine = regexp.MustCompile(`^worker (\d+) \(pid (\d+)\) says hello to (\S+)\n$`)

// helloFrom GETs / from src and returns the worker slot and pid that
// answered; the answer must name src as the client.
func helloFrom(t *testing.T, src, addr string) (slot, pid int) {
	t.Helper()
	body := httpGetFrom(t, src, addr)
	m := helloLine.FindStringSubmatch(body)
	if m == nil || m[3] != src {
		t.Fatalf("GET from %s answered %q, want `worker <id> (pid <pid>) says hello to %s`", src, body, src)
	}
	slot, _ = strconv.Atoi(m[1])
	pid, _ = strconv.Atoi(m[2])
	return slot, pid
}

// checkStickyHello GETs from every IP rounds times, each on a new
// connection, and checks that each IP always gets the same worker: its
// home by `stickyd lookup` (homes), with the pid stickyd logged for that
// slot. It returns how many IPs each slot served.
func checkStickyHello(t *testing.T, addr string, ips []string, rounds int, homes map[string]string, pids map[int]int) map[int]int {
	t.Helper()
	perSlot := map[int]int{}
	for _, ip := range ips {
		for round := range rounds {
			slot, pid := helloFrom(t, ip, addr)
			if name := "worker-" + strconv.Itoa(slot); name != homes[ip] || pid != pids[slot] {
				t.Fatalf("client %s, request %d: answered by %s pid %d; want %s pid %d",
					ip, round+1, name, pid, homes[ip], pids[slot])
			}
			if round == 0 {
				perSlot[slot]++
			}
		}
	}
	return perSlot
}

// `stickyd --workers 2 -- stickyd hello-worker`: each of 12 client IPs gets
// the same worker on all of its 3 connections (the one `stickyd lookup`
// names), and the worker reports the client's real IP.
func TestWorkersHelloStickyClientIP(t *testing.T) {
	cfg := writeWorkersConfig(t, testkit.FreePortBase(t, 2, workerPortsLo, workerPortsHi), "stickyd", "hello-worker")
	p := startStickyd(t, "--config", cfg, "--workers", "2", "--", "stickyd", "hello-worker")
	pids := waitWorkersReady(t, p, 2)
	var ips []string
	for i := range 12 {
		ips = append(ips, testkit.ClientIP(i*37))
	}
	perSlot := checkStickyHello(t, p.addr, ips, 3, lookupHomes(t, cfg, 2, ips), pids)
	if len(perSlot) != 2 {
		t.Errorf("12 client IPs all went to one worker: %v", perSlot)
	}
	t.Logf("12 IPs x 3 connections: IPs per worker %v", perSlot)
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("stickyd exit code %d after SIGTERM, want 0", code)
	}
	for slot, pid := range pids {
		if !procGone(pid) {
			t.Errorf("worker %d (pid %d) still runs after stickyd exited", slot, pid)
		}
	}
	for _, e := range p.logEntries("worker stopped") {
		if e.Exit == nil || *e.Exit != 0 {
			t.Errorf("worker %v (pid %d) did not exit 0 on SIGTERM: %+v", *e.Worker, e.Pid, e)
		}
	}
	if n := len(p.logEntries("worker stopped")); n != 2 {
		t.Errorf("%d workers logged as stopped, want 2", n)
	}
}

// SIGKILL to stickyd itself: it cannot stop its workers, so Pdeathsig
// must take them down.
func TestWorkersDieWithStickydKilled(t *testing.T) {
	cfg := writeWorkersConfig(t, testkit.FreePortBase(t, 2, workerPortsLo, workerPortsHi), "stickyd", "hello-worker")
	p := startStickyd(t, "--config", cfg, "--workers", "2", "--", "stickyd", "hello-worker")
	pids := waitWorkersReady(t, p, 2)
	groups := workerGroups(t, p, 2)
	for _, pid := range pids {
		if !groups[pid] {
			t.Fatalf("ready worker pid %d is not a child of stickyd (children %v)", pid, groups)
		}
	}
	helloFrom(t, testkit.ClientIP(1), p.addr) // the workers serve
	p.stop(t, syscall.SIGKILL)
	testkit.WaitFor(t, "the workers of a SIGKILLed stickyd to die", func() bool {
		return len(liveProcs(-1, groups)) == 0
	})
}

// The repo's config.toml as shipped (a hello worker per CPU, ports chosen
// by stickyd), run from a directory holding a copy of it, moved to a free
// listen port.
func TestWorkersRepoConfigTOML(t *testing.T) {
	src, err := os.ReadFile("../config.toml")
	if err != nil {
		t.Fatal(err)
	}
	addr := testkit.FreePort(t)
	conf := replaceLine(t, string(src), `(?m)^listen = .*$`, fmt.Sprintf("listen = %q", addr))
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// "auto": one per CPU stickyd may use (NumCPU, or less under a CPU
	// quota: TestWorkersAutoFollowsCPUQuota); check-config says how many.
	n := 0
	if _, out, _ := runStickyd(t, dir, nil, "", "check-config"); !strings.Contains(out, " workers") {
		t.Fatalf("check-config: %q", out)
	} else if _, err := fmt.Sscanf(out[strings.LastIndex(out, ", ")+2:], "%d workers", &n); err != nil || n < 1 || n > runtime.NumCPU() {
		t.Fatalf("check-config: %q (%v)", out, err)
	}
	p := launchStickydIn(t, dir, addr)
	pids := waitWorkersReady(t, p, n)
	ips := []string{testkit.ClientIP(3), testkit.ClientIP(300), testkit.ClientIP(3000)}
	perSlot := checkStickyHello(t, addr, ips, 5, lookupHomes(t, filepath.Join(dir, "config.toml"), n, ips), pids)
	t.Logf("repo config.toml, %d workers: 3 IPs x 5 requests, IPs per worker %v", n, perSlot)
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("stickyd exit code %d after SIGTERM, want 0", code)
	}
}

// replaceLine replaces the one match of pattern in s.
func replaceLine(t *testing.T, s, pattern, repl string) string {
	t.Helper()
	re := regexp.MustCompile(pattern)
	if n := len(re.FindAllString(s, -1)); n != 1 {
		t.Fatalf("config.toml: %d lines match %s, want 1", n, pattern)
	}
	return re.ReplaceAllLiteralString(s, repl)
}

// launchStickydIn runs stickyd with cwd dir and no flags, so that it reads
// dir/config.toml, which must listen on addr; it returns once stickyd says
// it listens. It is SIGKILLed at cleanup if still running.
func launchStickydIn(t *testing.T, dir, addr string) *proc {
	t.Helper()
	return launch(t, dir, addr)
}

// nginx launched as the worker, with proxy_protocol on its listener (real
// software reading stickyd's header): each client is told its own
// address, and nginx's error log stays clean of stickyd's readiness
// probes, which open with a LOCAL header (a bare probe is "[error] broken
// header" there).
func TestWorkersNginxProxyProtocol(t *testing.T) {
	bin := requireTool(t, "nginx", nginxStream)
	port := testkit.FreePortBase(t, 1, workerPortsLo, workerPortsHi)
	dir := t.TempDir()
	conf := filepath.Join(dir, "nginx.conf")
	errLog := filepath.Join(dir, "error.log")
	text := fmt.Sprintf(`load_module %s;
daemon off;
master_process off;
user root;
pid %s/nginx.pid;
error_log %s info;
events { worker_connections 64; }
stream { server { listen 127.0.0.1:%d proxy_protocol; return "$proxy_protocol_addr\n"; } }
`, nginxStream, dir, errLog, port)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := writeWorkersConfig(t, port, bin, "-p", dir, "-e", errLog, "-c", conf)
	p := startStickyd(t, "--config", cfg, "--workers", "1")
	waitWorkersReady(t, p, 1)
	for i := range 3 {
		ip := testkit.ClientIP(i * 11)
		c, err := testkit.DialFrom(ip, p.addr)
		if err != nil {
			t.Fatal(err)
		}
		told, err := io.ReadAll(c)
		c.Close()
		if err != nil || strings.TrimSpace(string(told)) != ip {
			t.Errorf("client %s: nginx told %q (%v), want its own address", ip, told, err)
		}
	}
	p.stop(t, syscall.SIGTERM)
	log, err := os.ReadFile(errLog)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), " connected to "); n < 4 {
		t.Fatalf("nginx logged %d connections, want the readiness probe and 3 clients:\n%s", n, log)
	}
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "[error]") || strings.Contains(line, "broken header") {
			t.Errorf("nginx error log: %s", line)
		}
	}
}
