package integration_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// Worker ports, start-up, `stickyd lookup` and `check-config` in the
// --workers forms, and workers that misbehave (issue 14, items 4 to 6 and
// "bad input"), on the stickyd binary with real worker processes.

// workerAddresses returns the addresses of the "worker addresses" log line.
func (p *proc) workerAddresses(t *testing.T) []string {
	t.Helper()
	type line struct {
		Addrs []string `json:"addresses"`
	}
	if lines := logsOf[line](p, "worker addresses"); len(lines) > 0 {
		return lines[0].Addrs
	}
	t.Fatalf("no \"worker addresses\" log line:\n%s", p.stderr.String())
	return nil
}

// lookupOut runs `stickyd lookup` with args (and stdin) and returns its
// lines keyed by IP.
func lookupOut(t *testing.T, stdin string, args ...string) map[string]string {
	t.Helper()
	code, out, stderr := runStickyd(t, "", nil, stdin, append([]string{"lookup"}, args...)...)
	if code != 0 {
		t.Fatalf("stickyd lookup %v: exit %d: %s", args, code, stderr)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		ip, name, _ := strings.Cut(line, " ")
		m[ip] = name
	}
	return m
}

// `stickyd lookup --workers 4 IP...` and `... | stickyd lookup --workers 4
// -- node app.js` print, for 1000 client IPs, the worker that the live
// proxy (started with no port settings) routes each of them to.
func TestLookupWorkersFormsMatchLiveProxy(t *testing.T) {
	p := startStickyd(t, "--workers", "4", "--", "stickyd", "hello-worker")
	waitWorkersReady(t, p, 4)
	ips := make([]string, 1000)
	live := map[string]string{}
	for i := range ips {
		ips[i] = testkit.ClientIP(i * 7)
		slot, _ := helloFrom(t, ips[i], p.addr)
		live[ips[i]] = "worker-" + strconv.Itoa(slot)
	}
	args := lookupOut(t, "", append([]string{"--workers", "4"}, ips...)...)
	stdin := lookupOut(t, strings.Join(ips, "\n")+"\n", "--workers", "4", "--", "node", "app.js")
	perWorker := map[string]int{}
	for _, ip := range ips {
		if args[ip] != live[ip] || stdin[ip] != live[ip] {
			t.Fatalf("%s: live proxy %s, lookup with IP arguments %q, with stdin and a command %q",
				ip, live[ip], args[ip], stdin[ip])
		}
		perWorker[live[ip]]++
	}
	if len(perWorker) != 4 {
		t.Errorf("1000 IPs over 4 workers: %v", perWorker)
	}
	if code, out, _ := runStickyd(t, "", nil, "", "lookup", "--workers", "4", "198.51.100.7"); code != 0 ||
		!strings.HasPrefix(out, "198.51.100.7 worker-") {
		t.Errorf("lookup --workers 4 198.51.100.7: exit %d, %q", code, out)
	}
}

// check-config takes stickyd's flags and worker command and agrees with
// serve on a file holding only `[workers] port_base = N`.
func TestCheckConfigWorkersForms(t *testing.T) {
	dir := t.TempDir()
	base := testkit.FreePortBase(t, 2, workerPortsLo, workerPortsHi)
	file := writeFile(t, dir, "w.toml", fmt.Sprintf("[workers]\nport_base = %d\n", base))
	code, _, bare := runStickyd(t, dir, nil, "", "check-config", file)
	serveCode, _, serveBare := runStickyd(t, dir, nil, "", "--config", file)
	if code != 2 || serveCode != 2 || bare != serveBare || !strings.Contains(bare, "workers.command") {
		t.Errorf("no command: check-config exit %d %q; serve exit %d %q", code, bare, serveCode, serveBare)
	}
	code, out, stderr := runStickyd(t, dir, nil, "", "check-config", "--workers", "2", file, "--", "stickyd", "hello-worker")
	if code != 0 || !strings.Contains(out, "2 workers") {
		t.Errorf("check-config --workers 2 FILE -- stickyd hello-worker: exit %d %q %q", code, out, stderr)
	}
	p := startStickyd(t, "--config", file, "--workers", "2", "--", "stickyd", "hello-worker")
	waitWorkersReady(t, p, 2)
	if got := p.workerAddresses(t); got[1] != "127.0.0.1:"+strconv.Itoa(base+1) {
		t.Errorf("worker addresses %v, want port_base %d", got, base)
	}
	code, _, stderr = runStickyd(t, dir, nil, "", "check-config", file, "--workers", "2")
	if code != 2 || !strings.Contains(stderr, "before FILE") {
		t.Errorf("flags after FILE: exit %d %q", code, stderr)
	}
	code, _, stderr = runStickyd(t, dir, nil, "", "check-config", "--workers", "2", file, "--", "no-such-worker-cmd")
	if code != 2 || !strings.Contains(stderr, "no-such-worker-cmd") {
		t.Errorf("unknown worker command: exit %d %q", code, stderr)
	}
	// A path is checked as exec will use it; serving fails the same way.
	for _, cmd := range []string{"check-config", "serve"} {
		args := []string{"check-config", "--workers", "2", file, "--", "./no-such-app.js"}
		if cmd == "serve" {
			args = []string{"--config", file, "--workers", "2", "--", "./no-such-app.js"}
		}
		code, _, stderr = runStickyd(t, dir, nil, "", args...)
		if code != 2 || !strings.Contains(stderr, `workers.command: exec: "./no-such-app.js": stat ./no-such-app.js: no such file or directory`) {
			t.Errorf("%s with a missing worker program: exit %d %q", cmd, code, stderr)
		}
	}
	// A socket_dir that cannot be made fails the start (it used to leave
	// stickyd serving with no worker, the error logged only at its stop).
	plain := writeFile(t, dir, "s.toml", fmt.Sprintf("listen = %q\n", testkit.FreePort(t)))
	code, _, stderr = runStickyd(t, dir, nil, "", "--config", plain, "--socket-dir", plain+"/sockets", "--workers", "2", "--", "stickyd", "hello-worker")
	if code != 2 || !strings.Contains(stderr, "workers.socket_dir: mkdir "+plain+": not a directory") {
		t.Errorf("a socket_dir under a file: exit %d %q", code, stderr)
	}
}

// Two stickyd instances with workers and no port settings run side by
// side on distinct worker ports, each below the ephemeral range.
func TestTwoInstancesNoPortSettings(t *testing.T) {
	a := startStickyd(t, "--workers", "3", "--", "stickyd", "hello-worker")
	b := startStickyd(t, "--workers", "3", "--", "stickyd", "hello-worker")
	waitWorkersReady(t, a, 3)
	waitWorkersReady(t, b, 3)
	seen := map[string]bool{}
	for _, p := range []*proc{a, b} {
		for _, addr := range p.workerAddresses(t) {
			_, port, _ := net.SplitHostPort(addr)
			if n, _ := strconv.Atoi(port); seen[addr] || n < 10000 || n >= ephemeralLow(t) {
				t.Errorf("worker address %s reused or outside 10000..%d", addr, ephemeralLow(t)-1)
			}
			seen[addr] = true
		}
		helloFrom(t, testkit.ClientIP(5), p.addr)
	}
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.Fields(string(b))[0])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// --port-base and STICKYD_PORT_BASE set the ports; a port held by another
// program is refused at start naming the port and the worker slot (exit 1,
// no worker started); --port-base without workers is a usage error;
// --socket-dir gives SOCKET.
func TestWorkerPortFlags(t *testing.T) {
	base := testkit.FreePortBase(t, 3, workerPortsLo, workerPortsHi)
	p := startStickyd(t, "--workers", "2", "--port-base", strconv.Itoa(base), "--", "stickyd", "hello-worker")
	waitWorkersReady(t, p, 2)
	if got := p.workerAddresses(t); got[0] != "127.0.0.1:"+strconv.Itoa(base) {
		t.Errorf("--port-base %d: worker addresses %v", base, got)
	}
	p.stop(t, syscall.SIGTERM)

	busy := testkit.Listen(t, "127.0.0.1:"+strconv.Itoa(base+2))
	defer busy.Close()
	env := []string{"STICKYD_PORT_BASE=" + strconv.Itoa(base)}
	code, _, stderr := runStickyd(t, "", env, "", "--listen", testkit.FreePort(t), "--workers", "3", "--", "stickyd", "hello-worker")
	want := fmt.Sprintf("worker-2 (port_base %d + 2)", base)
	if code != 1 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "127.0.0.1:"+strconv.Itoa(base+2)) ||
		strings.Contains(stderr, "worker ready") {
		t.Errorf("port in use: exit %d, stderr %q; want exit 1 naming %q", code, stderr, want)
	}
	code, _, stderr = runStickyd(t, "", nil, "", "--backend", "127.0.0.1:1", "--port-base", "4000")
	if code != 2 || !strings.Contains(stderr, "--port-base") {
		t.Errorf("--port-base without workers: exit %d %q", code, stderr)
	}
	code, _, stderr = runStickyd(t, "", nil, "", "check-config", "--workers", "2", "--port-base", "65535", "--", "stickyd", "hello-worker")
	if code != 2 || !strings.Contains(stderr, "workers.port_base") {
		t.Errorf("--port-base 65535 with 2 workers: exit %d %q", code, stderr)
	}

	sockets := filepath.Join(t.TempDir(), "s")
	p = startStickyd(t, "--workers", "1", "--socket-dir", sockets, "--", "stickyd", "hello-worker")
	waitWorkersReady(t, p, 1)
	if got := p.workerAddresses(t); got[0] != "unix:"+filepath.Join(sockets, "worker-0.sock") {
		t.Errorf("--socket-dir: worker addresses %v", got)
	}
	helloFrom(t, testkit.ClientIP(9), p.addr)
}

// A client that connects before any worker is ready waits for one
// (instead of being refused) and gets its answer.
func TestEarlyClientWaitsForFirstWorker(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	script := fmt.Sprintf("while [ ! -e %q ]; do sleep 0.02; done; exec %q hello-worker", gate, stickydBin)
	p := startStickyd(t, "--workers", "2", "--", "sh", "-c", script)
	c := testkit.Dial(t, testkit.ClientIP(1), p.addr)
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if len(p.readyWorkers()) != 0 {
		t.Fatal("a worker was ready before the gate opened")
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("early client got %q, %v; want its answer once a worker is ready", line, err)
	}
	if opsLogged(p, "no backend available") {
		t.Errorf("a client was refused:\n%s", p.stderr.String())
	}
}

// Workers that misbehave, each in its own slot: one exits at once, one
// never listens, one prints garbage and listens on the wrong port. Each
// gets a clear line naming its slot and what stickyd expected, with
// backoff; the good worker serves every client meanwhile.
func TestMisbehavingWorkersLoggedOthersServe(t *testing.T) {
	script := fmt.Sprintf(`case $STICKYD_WORKER_ID in
0) exec %q hello-worker ;;
1) echo starting; exit 3 ;;
2) exec sleep 1000 ;;
3) printf '\000\377garbage\033[31m no newline'; PORT=0 exec %q hello-worker ;;
esac`, stickydBin, stickydBin)
	cfg := writeFile(t, t.TempDir(), "w.toml", "[workers]\nstartup_timeout = \"4s\"\nstop_timeout = \"2s\"\n")
	p := startStickyd(t, "--config", cfg, "--workers", "4", "--", "sh", "-c", script)
	testkit.WaitFor(t, "the misbehaving workers' log lines", func() bool {
		return len(workerLines(p, "worker exited", 1)) >= 2 &&
			len(workerLines(p, "worker not ready within startup timeout, killing it", 2)) >= 1 &&
			len(workerLines(p, "worker listens, but not on its address; it gets no traffic until it does", 3)) >= 1
	})
	exit := workerLines(p, "worker exited", 1)[0]
	if exit["ready"] != false || !strings.Contains(fmt.Sprint(exit["expected"]), "PORT=") || exit["exit_code"] != 3.0 {
		t.Errorf("worker 1's exit line %v", exit)
	}
	if e := workerLines(p, "worker not ready within startup timeout, killing it", 2)[0]; !strings.Contains(fmt.Sprint(e["expected"]), "PORT=") {
		t.Errorf("worker 2's timeout line %v", e)
	}
	wrong := workerLines(p, "worker listens, but not on its address; it gets no traffic until it does", 3)[0]
	if on := fmt.Sprint(wrong["listening_on"]); !strings.Contains(on, "127.0.0.1:") || strings.Contains(on, fmt.Sprint(wrong["address"])) {
		t.Errorf("worker 3's line %v", wrong)
	}
	if !strings.Contains(p.stderr.String(), `garbage\u001b[31m no newline","worker":3`) &&
		!strings.Contains(p.stderr.String(), `garbage\u001b[31m no newline","stream":"stdout","worker":3`) {
		t.Logf("worker 3's binary output as logged: %q", grepLines(p.stderr.String(), "garbage"))
		t.Error("worker 3's binary output was not logged as one line of its own")
	}
	if len(workerLines(p, "restarting worker", 1)) < 1 {
		t.Error("worker 1 was not restarted with a backoff")
	}
	for i := range 40 {
		if slot, _ := helloFrom(t, testkit.ClientIP(i*13), p.addr); slot != 0 {
			t.Fatalf("client %d answered by worker %d", i, slot)
		}
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}

// workerLines returns the fields of stickyd's log lines with msg about
// worker slot.
func workerLines(p *proc, msg string, slot int) []map[string]any {
	var out []map[string]any
	for _, m := range logsOf[map[string]any](p, msg) {
		if m["worker"] == float64(slot) {
			out = append(out, m)
		}
	}
	return out
}

// TestClusterAppRefusedUnderStickyd: an app moved to stickyd that still
// forks its own workers with Node's cluster module would share each
// worker's port among its forks round-robin, and a client's requests would
// reach different processes. stickyd-worker's listen refuses in the fork,
// and the reason, with the fix, is in stickyd's log under the worker's
// slot; the worker is retried with backoff.
func TestClusterAppRefusedUnderStickyd(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed (./test.sh installs it)")
	}
	npmExample(t, "socketio", "stickyd-worker/node_modules/proxy-protocol-js") // node/'s dependency installed
	app, err := filepath.Abs("../node/testdata/clustered.js")
	if err != nil {
		t.Fatal(err)
	}
	p := startStickyd(t, "--workers", "1", "--", "node", app)
	testkit.WaitFor(t, "the fork's refusal in the log", func() bool {
		return strings.Contains(p.stderr.String(), "this process is a worker of Node's cluster module (the app calls cluster.fork()), under stickyd") &&
			len(workerLines(p, "restarting worker", 0)) >= 1
	})
	for _, l := range grepLines(p.stderr.String(), "worker of Node's cluster module") {
		if !strings.Contains(l, `"worker":0`) || !strings.Contains(l, "Fix: remove the cluster.isPrimary / cluster.fork() branch") {
			t.Errorf("the refusal as logged: %s", l)
		}
	}
	if len(p.readyWorkers()) != 0 {
		t.Error("a clustered worker was taken as ready")
	}
}

// TestWorkerOutputInherit: with output = "inherit", what the workers print
// reaches stickyd's stdout and stderr unchanged, as with Node's cluster: a
// JSON app log line is a line of its own, not a string inside stickyd's
// log line; by default it is logged with worker=<i>.
func TestWorkerOutputInherit(t *testing.T) {
	script := fmt.Sprintf(`printf '%%s\n' '{"level":30,"msg":"app line","worker":'"$STICKYD_WORKER_ID"'}'; echo "app stderr $STICKYD_WORKER_ID" >&2; exec %q hello-worker`, stickydBin)
	for _, output := range []string{"inherit", "log"} {
		t.Run(output, func(t *testing.T) {
			cfg := writeFile(t, t.TempDir(), "w.toml", fmt.Sprintf("[workers]\noutput = %q\n", output))
			p := startStickyd(t, "--config", cfg, "--workers", "2", "--", "sh", "-c", script)
			waitWorkersReady(t, p, 2)
			for i := range 2 {
				raw := fmt.Sprintf(`{"level":30,"msg":"app line","worker":%d}`, i)
				if output == "log" {
					testkit.WaitFor(t, "the line logged", func() bool { return len(workerLines(p, raw, i)) == 1 })
					if e := workerLines(p, raw, i)[0]; e["stream"] != "stdout" {
						t.Errorf("worker %d's line logged as %v, want stream stdout", i, e)
					}
					continue
				}
				testkit.WaitFor(t, "the lines as printed", func() bool {
					lines := strings.Split(p.stderr.String(), "\n")
					return slices.Contains(lines, raw) && slices.Contains(lines, fmt.Sprintf("app stderr %d", i))
				})
				if strings.Contains(p.stderr.String(), strings.ReplaceAll(raw, `"`, `\"`)) {
					t.Errorf("worker %d's JSON line was also logged as a string", i)
				}
			}
			if code := p.stop(t, syscall.SIGTERM); code != 0 {
				t.Errorf("exit code %d", code)
			}
		})
	}
}
