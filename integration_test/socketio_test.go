package integration_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

// Issue 4's proof: a real socket.io 4 app (examples/socketio/server.js)
// launched by stickyd as 4 workers, and 200 real socket.io-client clients,
// each on its own loopback address, with socket.io's default transports
// (long-polling, then the websocket upgrade).

const (
	sioWorkers = 4
	sioClients = 200
)

// sioSession is what one client saw between a 'welcome' and the end of
// that connection (testdata/sio-clients.js).
type sioSession struct {
	Worker     string `json:"worker"`         // STICKYD_WORKER_ID in 'welcome'
	Pid        int    `json:"pid"`            // the worker's pid in 'welcome'
	ClientIP   string `json:"clientIp"`       // the client address the worker was told
	At         int64  `json:"at"`             // ms after the script started
	Upgraded   bool   `json:"upgraded"`       // the transport became websocket
	WSLocal    string `json:"wsLocalAddress"` // the websocket's local address
	PingsOK    int    `json:"pingsOk"`        // acks from the welcoming worker
	PingsWS    int    `json:"pingsWs"`        // ... of which over the websocket
	Pongs      int    `json:"pongs"`          // 'pong' events from the welcoming worker
	Mismatches int    `json:"mismatches"`
	PingErrors int    `json:"pingErrors"` // ack timeouts
}

type sioClient struct {
	IP          string       `json:"ip"`
	Session     *sioSession  `json:"session"` // "ready" event: the current session
	Connects    int          `json:"connects"`
	Disconnects []sioDisc    `json:"disconnects"`
	Errors      []string     `json:"errors"`
	Sessions    []sioSession `json:"sessions"`
	Outcome     string       `json:"outcome"`     // nonsticky: ok, connect_error, disconnect: ..., timeout
	PingsAtKill int          `json:"pingsAtKill"` // sticky: acks of the session when a worker was killed
}

type sioDisc struct {
	Reason string `json:"reason"`
	At     int64  `json:"at"`
	Detail string `json:"detail"`
}

type sioEvent struct {
	Event     string      `json:"event"` // "ready" or "summary"
	Ms        int64       `json:"ms"`
	StartedAt int64       `json:"startedAt"` // Unix ms
	TimedOut  bool        `json:"timedOut"`
	Clients   []sioClient `json:"clients"`
}

// sioRun is one run of testdata/sio-clients.js.
type sioRun struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan sioEvent // closed at the end of stdout
	stderr *testkit.SyncBuffer
}

// socketIOExample returns the absolute path of examples/socketio, skipping
// the test when node or the npm packages are missing (./test.sh installs
// them).
func socketIOExample(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed (./test.sh installs it)")
	}
	return npmExample(t, "socketio", "socket.io", "socket.io-client", "stickyd-worker/node_modules/proxy-protocol-js")
}

// npmExample returns the absolute path of examples/name, skipping the test
// when one of its npm packages is missing.
func npmExample(t *testing.T, name string, packages ...string) string {
	t.Helper()
	dir, err := filepath.Abs("../examples/" + name)
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range packages {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg)); err != nil {
			t.Skipf("%s is not installed: run npm ci in node/, then in examples/%s (./test.sh does)", pkg, name)
		}
	}
	return dir
}

// startSIOClients starts one node process running len(ips) clients against
// url in mode "sticky" or "nonsticky". It is killed at cleanup if still
// running.
func startSIOClients(t *testing.T, example, url, mode string, ips []string, deadline time.Duration) *sioRun {
	t.Helper()
	conf, _ := json.Marshal(map[string]any{"url": url, "ips": ips, "exampleDir": example, "mode": mode,
		"deadlineMs": deadline.Milliseconds(), "pingEveryMs": 300})
	r := &sioRun{events: make(chan sioEvent, 4), stderr: &testkit.SyncBuffer{}}
	r.cmd = exec.Command("node", "testdata/sio-clients.js", string(conf))
	r.cmd.Stderr = r.stderr
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if r.stdin, err = r.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go r.read(stdout)
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		if t.Failed() {
			t.Logf("%s clients' stderr:\n%s", mode, r.stderr.String())
		}
	})
	return r
}

func (r *sioRun) read(stdout io.Reader) {
	defer close(r.events)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev sioEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			fmt.Fprintf(r.stderr, "stdout: %.200s (%v)\n", sc.Text(), err)
			continue
		}
		r.events <- ev
	}
}

// next waits for the script's next event, which must be want.
func (r *sioRun) next(t *testing.T, want string, timeout time.Duration) sioEvent {
	t.Helper()
	select {
	case ev, ok := <-r.events:
		if !ok {
			t.Fatalf("clients exited before %q: %v", want, r.cmd.Wait())
		}
		if ev.Event != want || ev.TimedOut {
			t.Fatalf("clients sent %q (timedOut=%v), want %q; some clients:\n%s", ev.Event, ev.TimedOut, want, stragglers(ev))
		}
		return ev
	case <-time.After(timeout):
		t.Fatalf("no %q from the clients within %v", want, timeout)
	}
	return sioEvent{}
}

// stragglers describes a few clients of a timed-out run that had no
// working session at the end.
func stragglers(ev sioEvent) string {
	var b strings.Builder
	n := 0
	for _, c := range ev.Clients {
		if k := len(c.Sessions); k > 0 && c.Sessions[k-1].Upgraded && c.Sessions[k-1].PingsWS > 0 {
			continue
		}
		if n++; n > 5 {
			break
		}
		fmt.Fprintf(&b, "%s: connects %d, sessions %+v, disconnects %v, errors %q, outcome %q\n",
			c.IP, c.Connects, c.Sessions, c.Disconnects, c.Errors, c.Outcome)
	}
	return b.String()
}

// TestSocketIOWorkers runs examples/socketio/server.js as 4 stickyd
// workers and 200 socket.io clients, each on its own address:
//   - through stickyd every client connects, upgrades to websocket, and
//     talks to one worker only, its home by `stickyd lookup`, which is told
//     the client's own IP;
//   - a worker SIGKILLed mid-test is restarted in its slot; its clients
//     reconnect and work, the other workers' clients see nothing;
//   - through a round-robin proxy the same clients fail;
//   - SIGTERM to stickyd stops every worker and exits 0.
func TestSocketIOWorkers(t *testing.T) {
	example := socketIOExample(t)
	server := filepath.Join(example, "server.js")
	base := testkit.FreePortBase(t, sioWorkers, workerPortsLo, workerPortsHi)
	cfg := writeWorkersConfig(t, base, "node", server)
	p := startStickyd(t, "--config", cfg, "--drain-timeout", "5s",
		"--workers", strconv.Itoa(sioWorkers), "--", "node", server)
	pids := waitWorkersReady(t, p, sioWorkers)
	ips := testkit.ClientIPs(sioClients)
	homes := lookupHomes(t, cfg, sioWorkers, ips)

	run := startSIOClients(t, example, "http://"+p.addr, "sticky", ips, 45*time.Second)
	ready := run.next(t, "ready", 30*time.Second)
	perWorker := checkSticky(t, ready, homes, pids)
	t.Logf("sticky: %d/%d clients connected, upgraded to websocket and acked by their home worker in %d ms; clients per worker %v",
		len(ready.Clients), sioClients, ready.Ms, perWorker)

	victim := busiestWorker(perWorker)
	killWorker(t, run, victim, pids[victim])
	newPid := waitRestarted(t, p, victim, pids[victim])
	summary := run.next(t, "summary", 30*time.Second)
	checkRecovery(t, p, summary, victim, pids[victim], newPid)
	checkRestartedSlot(t, p, ready, victim, newPid)
	if t.Failed() {
		return
	}

	var targets []string
	for i := range sioWorkers {
		targets = append(targets, "127.0.0.1:"+strconv.Itoa(base+i))
	}
	rr := startRoundRobin(t, targets)
	nonSticky := startSIOClients(t, example, "http://"+rr, "nonsticky", ips, 30*time.Second)
	checkNonSticky(t, nonSticky.next(t, "summary", 40*time.Second))

	checkStopLeavesNoWorker(t, p)
}

// checkSticky checks the "ready" snapshot: every client is welcomed by its
// home worker (by `stickyd lookup`), which was told the client's own
// address, is on the websocket, and got only that worker's acks and pongs.
// It returns the clients per worker slot.
func checkSticky(t *testing.T, ready sioEvent, homes map[string]string, pids map[int]int) map[int]int {
	t.Helper()
	if len(ready.Clients) != sioClients {
		t.Fatalf("ready with %d clients, want %d", len(ready.Clients), sioClients)
	}
	perWorker := map[int]int{}
	for _, c := range ready.Clients {
		s := c.Session
		if s == nil {
			t.Fatalf("client %s: no session at ready", c.IP)
		}
		slot, _ := strconv.Atoi(s.Worker)
		switch {
		case "worker-"+s.Worker != homes[c.IP]:
			t.Errorf("client %s: welcomed by worker %s, its home is %s", c.IP, s.Worker, homes[c.IP])
		case s.Pid != pids[slot]:
			t.Errorf("client %s: worker %s has pid %d, stickyd launched pid %d", c.IP, s.Worker, s.Pid, pids[slot])
		case s.ClientIP != c.IP || s.WSLocal != c.IP:
			t.Errorf("client %s: the worker was told client IP %q; the websocket was bound to %q", c.IP, s.ClientIP, s.WSLocal)
		case !s.Upgraded || s.PingsWS == 0 || s.Pongs == 0 || s.Mismatches != 0 || s.PingErrors != 0:
			t.Errorf("client %s: session %+v, want upgraded, acks and pongs over the websocket, all from its worker", c.IP, *s)
		}
		perWorker[slot]++
	}
	if len(perWorker) != sioWorkers {
		t.Errorf("clients per worker %v: some worker got none", perWorker)
	}
	return perWorker
}

func busiestWorker(perWorker map[int]int) int {
	best := 0
	for slot, n := range perWorker {
		if n > perWorker[best] || (n == perWorker[best] && slot < best) {
			best = slot
		}
	}
	return best
}

// killWorker SIGKILLs the worker process (not its group: only the node
// process dies, as in a crash) and tells the clients.
func killWorker(t *testing.T, run *sioRun, slot, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill worker %d (pid %d): %v", slot, pid, err)
	}
	if _, err := fmt.Fprintf(run.stdin, "killed %d %d\n", slot, pid); err != nil {
		t.Fatalf("tell the clients: %v", err)
	}
}

// waitRestarted waits until the supervisor reports slot ready with a pid
// other than old, and returns it.
func waitRestarted(t *testing.T, p *proc, slot, old int) int {
	t.Helper()
	var pid int
	testkit.WaitFor(t, fmt.Sprintf("worker %d restarted", slot), func() bool {
		pid = p.readyWorkers()[slot].Pid
		return pid != old
	})
	return pid
}

// checkRecovery checks the clients after worker victim (pid old) was
// SIGKILLed and restarted as pid newPid: its clients were disconnected,
// reconnected by themselves and work again; every other client kept its
// one connection and went on exchanging messages, with no lost ack.
func checkRecovery(t *testing.T, p *proc, summary sioEvent, victim, old, newPid int) {
	t.Helper()
	readyAt := restartReadyAt(t, p, victim)
	outcomes, reasons := map[string]int{}, map[string]int{}
	for _, c := range summary.Clients {
		if len(c.Sessions) == 0 {
			t.Errorf("client %s: no session", c.IP)
			continue
		}
		for _, s := range c.Sessions {
			if s.Mismatches != 0 || s.ClientIP != c.IP || (s.Upgraded && s.WSLocal != c.IP) {
				t.Errorf("client %s: session %+v mixed workers or lost its IP", c.IP, s)
			}
		}
		if c.Sessions[0].Pid != old {
			outcomes["bystander"]++
			checkBystander(t, c, victim)
			continue
		}
		for _, d := range c.Disconnects {
			reasons[d.Reason]++
		}
		outcomes[victimOutcome(t, c, summary.StartedAt, victim, old, newPid, readyAt)]++
	}
	if n := len(p.logEntries("restarting worker")); n != 1 {
		t.Errorf("%d worker restarts logged, want 1", n)
	}
	t.Logf("worker %d SIGKILLed (pid %d -> %d): its clients disconnected (%s) and reconnected: %d to the restarted worker, %d meanwhile to their next choice; %d clients of the other workers kept their connection and messages; all done %d ms after start",
		victim, old, newPid, sortedCounts(reasons), outcomes["home"], outcomes["elsewhere"], outcomes["bystander"], summary.Ms)
}

// checkBystander: a client of a worker that was not killed saw nothing of
// it: one connection, no error, and pings acked after the kill.
func checkBystander(t *testing.T, c sioClient, victim int) {
	t.Helper()
	s := c.Sessions[0]
	if len(c.Disconnects) != 0 || len(c.Sessions) != 1 || c.Connects != 1 || s.PingErrors != 0 || s.PingsOK < c.PingsAtKill+2 {
		t.Errorf("client %s of worker %s disturbed by worker %d's death: disconnects %v, %d sessions, %d ping errors, %d acks of which %d after the kill",
			c.IP, s.Worker, victim, c.Disconnects, len(c.Sessions), s.PingErrors, s.PingsOK, s.PingsOK-c.PingsAtKill)
	}
}

// victimOutcome checks a client of the killed worker: it was disconnected
// and now works on a live worker. That is the restarted one ("home"),
// unless the client reconnected while its worker was still down
// ("elsewhere": stickyd sent it to its next choice).
func victimOutcome(t *testing.T, c sioClient, startedAt int64, victim, old, newPid int, readyAt time.Time) string {
	t.Helper()
	last := c.Sessions[len(c.Sessions)-1]
	if len(c.Disconnects) == 0 || len(c.Sessions) < 2 || !last.Upgraded || last.PingsWS == 0 || last.Pid == old {
		t.Errorf("client %s of the killed worker did not recover: disconnects %v, sessions %+v", c.IP, c.Disconnects, c.Sessions)
		return "failed"
	}
	welcomed := time.UnixMilli(startedAt + last.At)
	switch {
	case last.Worker == strconv.Itoa(victim) && last.Pid == newPid:
		return "home"
	case welcomed.Before(readyAt.Add(time.Second)):
		return "elsewhere"
	}
	t.Errorf("client %s: welcomed at %v by worker %s pid %d, after worker %d was back at %v as pid %d",
		c.IP, welcomed.Format(time.StampMilli), last.Worker, last.Pid, victim, readyAt.Format(time.StampMilli), newPid)
	return "failed"
}

// restartReadyAt is when the supervisor last reported slot ready.
func restartReadyAt(t *testing.T, p *proc, slot int) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, p.readyWorkers()[slot].TS)
	if err != nil {
		t.Fatalf("worker %d ready time: %v", slot, err)
	}
	return ts
}

// checkRestartedSlot: new connections from the killed worker's clients'
// IPs go to the restarted worker (server.js answers GET / like the hello
// worker).
func checkRestartedSlot(t *testing.T, p *proc, ready sioEvent, victim, newPid int) {
	t.Helper()
	var n int
	for _, c := range ready.Clients {
		if c.Session.Worker != strconv.Itoa(victim) {
			continue
		}
		if slot, pid := helloFrom(t, c.IP, p.addr); slot != victim || pid != newPid {
			t.Errorf("client %s: GET answered by worker %d pid %d, want the restarted worker %d pid %d", c.IP, slot, pid, victim, newPid)
		}
		n++
	}
	t.Logf("GET / from the %d IPs of worker %d: all answered by its new pid %d", n, victim, newPid)
}

// checkNonSticky: through a round-robin proxy a clear majority of the same
// clients fail, most with the error stickiness prevents: a request of a
// session reaching a worker that does not know it.
func checkNonSticky(t *testing.T, summary sioEvent) {
	t.Helper()
	if len(summary.Clients) != sioClients {
		t.Fatalf("summary with %d clients, want %d", len(summary.Clients), sioClients)
	}
	outcomes := map[string]int{}
	var ok, unknown int
	for _, c := range summary.Clients {
		if c.Outcome == "ok" {
			ok++
		}
		outcomes[strings.SplitN(c.Outcome, ":", 2)[0]]++
		if strings.Contains(strings.Join(c.Errors, " "), "Session ID unknown") ||
			(len(c.Disconnects) > 0 && strings.Contains(c.Disconnects[0].Detail, "Session ID unknown")) {
			unknown++
		}
	}
	t.Logf("round-robin (non-sticky): %d/%d clients completed connect+upgrade+ack, %d got \"Session ID unknown\"; outcomes %v",
		ok, sioClients, unknown, sortedCounts(outcomes))
	if ok > sioClients/4 {
		t.Errorf("%d of %d clients succeeded without stickiness; want a clear majority to fail", ok, sioClients)
	}
	if unknown < sioClients/2 {
		t.Errorf("only %d of %d clients saw \"Session ID unknown\"", unknown, sioClients)
	}
}

func sortedCounts(m map[string]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// checkStopLeavesNoWorker: SIGTERM to stickyd stops every worker (and
// anything in their process groups) and exits 0.
func checkStopLeavesNoWorker(t *testing.T, p *proc) {
	t.Helper()
	groups := workerGroups(t, p, sioWorkers)
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("stickyd exit code %d after SIGTERM, want 0", code)
	}
	if left := liveProcs(-1, groups); len(left) != 0 {
		t.Errorf("processes left in the workers' groups after stickyd exited: %v", left)
	}
	if n := len(p.logEntries("worker stopped")); n != sioWorkers {
		t.Errorf("%d workers logged as stopped, want %d", n, sioWorkers)
	}
}

// startRoundRobin runs a deliberately non-sticky TCP proxy on loopback:
// each new connection goes to the next target in turn, opening with a
// PROXY v2 header with the real client address, as stickyd's would. It
// returns the listen address; everything is closed at cleanup.
func startRoundRobin(t *testing.T, targets []string) string {
	t.Helper()
	ln := testkit.Listen(t, "127.0.0.1:0")
	rr := &roundRobin{targets: targets, conns: map[net.Conn]struct{}{}}
	rr.wg.Go(func() { rr.serve(ln) })
	t.Cleanup(func() {
		ln.Close()
		rr.closeAll()
		rr.wg.Wait()
	})
	return ln.Addr().String()
}

type roundRobin struct {
	targets []string
	n       atomic.Uint64
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{} // guarded by mu; nil once closed
}

func (rr *roundRobin) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		rr.wg.Go(func() { rr.relay(c.(*net.TCPConn)) })
	}
}

// track registers c for closeAll; false once closed.
func (rr *roundRobin) track(c net.Conn) bool {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.conns == nil {
		return false
	}
	rr.conns[c] = struct{}{}
	return true
}

// untrack closes conns and forgets them.
func (rr *roundRobin) untrack(conns ...net.Conn) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(rr.conns, c)
	}
}

func (rr *roundRobin) closeAll() {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	for c := range rr.conns {
		c.Close()
	}
	rr.conns = nil
}

func (rr *roundRobin) relay(client *net.TCPConn) {
	defer client.Close()
	target := rr.targets[(rr.n.Add(1)-1)%uint64(len(rr.targets))]
	bc, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil || !rr.track(client) || !rr.track(bc) {
		if bc != nil {
			bc.Close()
		}
		return
	}
	backend := bc.(*net.TCPConn)
	defer rr.untrack(client, backend)
	if _, err := pp.HeaderProxyFromAddrs(2, client.RemoteAddr(), client.LocalAddr()).WriteTo(backend); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		copyHalf(backend, client)
		close(done)
	}()
	copyHalf(client, backend)
	<-done
}

// copyHalf copies src to dst, then half-closes dst.
func copyHalf(dst, src *net.TCPConn) {
	io.Copy(dst, src)
	dst.CloseWrite()
}
