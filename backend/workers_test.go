package backend

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Worker ports come from 20000-29999: below the ephemeral range, so that
// no client socket of the tests can take them, and apart from the
// integration tests' (10000-19999), which may run at the same time.
const workerPortsLo, workerPortsHi = 20000, 30000

// supHarness runs a Supervisor over fake workers and records what it reports.
type supHarness struct {
	sup      *Supervisor
	logs     *observer.ObservedLogs
	states   []chan bool // onState calls, per slot
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
	runErr   error
}

func fastTiming() workerTiming {
	return workerTiming{
		backoffMin:  20 * time.Millisecond,
		backoffMax:  80 * time.Millisecond,
		stableAfter: time.Minute,
		readyPoll:   10 * time.Millisecond,
		dialTimeout: 100 * time.Millisecond,
		outputGrace: time.Second,
	}
}

// fakeConfig returns a config running count fake workers on free ports.
func fakeConfig(t *testing.T, count int, env map[string]string) WorkerConfig {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A -race binary otherwise sleeps 1s in os.Exit (GORACE atexit_sleep_ms).
	e := map[string]string{fakeWorkerEnv: "worker", "GORACE": "atexit_sleep_ms=0"}
	for k, v := range env {
		e[k] = v
	}
	return WorkerConfig{Command: []string{exe}, Count: count, PortBase: testkit.FreePortBase(t, count, workerPortsLo, workerPortsHi), Env: e,
		StartupTimeout: testkit.Guard / 2, StopTimeout: testkit.Guard / 2}
}

func startSupervisor(t *testing.T, cfg WorkerConfig, tweak func(*workerTiming)) *supHarness {
	t.Helper()
	h := newSupHarness(t, cfg)
	if tweak != nil {
		tweak(&h.sup.timing)
	}
	h.run(t)
	return h
}

// newSupHarness makes a Supervisor for cfg with fast timing, recording
// its logs and onState calls, and does not run it.
func newSupHarness(t *testing.T, cfg WorkerConfig) *supHarness {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	h := &supHarness{logs: logs, done: make(chan error, 1)}
	for range cfg.count() {
		h.states = append(h.states, make(chan bool, 256))
	}
	sup, err := NewSupervisor(cfg, zap.New(core).Named("worker"), func(slot int, ready bool) { h.states[slot] <- ready })
	if err != nil {
		t.Fatal(err)
	}
	sup.timing = fastTiming()
	h.sup = sup
	return h
}

// run runs h's Supervisor until the test ends.
func (h *supHarness) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.sup.Run(ctx) }()
	t.Cleanup(func() { h.stop(t) })
}

// stop cancels Run and waits for it to return.
func (h *supHarness) stop(t *testing.T) error {
	t.Helper()
	h.stopOnce.Do(func() {
		h.cancel()
		h.runErr = testkit.Await(t, h.done, "Run did not return after cancel")
	})
	return h.runErr
}

// waitState waits for the next onState call of slot and checks it.
func (h *supHarness) waitState(t *testing.T, slot int, want bool) {
	t.Helper()
	if got := testkit.Await(t, h.states[slot], "slot %d: no onState(%v) within %v", slot, want, testkit.Guard); got != want {
		t.Fatalf("slot %d: onState(%v), want onState(%v)", slot, got, want)
	}
}

// entries returns the log entries with msg about worker slot.
func (h *supHarness) entries(msg string, slot int) []observer.LoggedEntry {
	var out []observer.LoggedEntry
	for _, e := range h.logs.FilterMessage(msg).All() {
		if e.ContextMap()["worker"] == int64(slot) {
			out = append(out, e)
		}
	}
	return out
}

func splitAddress(a string) (network, addr string) {
	if p, ok := strings.CutPrefix(a, "unix:"); ok {
		return "unix", p
	}
	return "tcp", a
}

// dialWorker connects to the fake worker at address ("unix:" for a socket).
func dialWorker(t *testing.T, address string) net.Conn {
	t.Helper()
	network, addr := splitAddress(address)
	c, err := net.DialTimeout(network, addr, testkit.Guard)
	if err != nil {
		t.Fatalf("dial %s: %v", address, err)
	}
	return c
}

// askEnv asks the fake worker at address for its environment.
func askEnv(t *testing.T, address string) fakeEnv {
	t.Helper()
	c := dialWorker(t, address)
	defer c.Close()
	c.SetDeadline(time.Now().Add(testkit.Guard))
	fmt.Fprintln(c, "env")
	var env fakeEnv
	if err := json.NewDecoder(c).Decode(&env); err != nil {
		t.Fatalf("env from %s: %v", address, err)
	}
	return env
}

// send writes one command line to the fake worker at address.
func send(t *testing.T, address, cmd string) {
	t.Helper()
	c := dialWorker(t, address)
	defer c.Close()
	fmt.Fprintln(c, cmd)
	c.SetReadDeadline(time.Now().Add(testkit.Guard))
	_, _ = bufio.NewReader(c).ReadByte() // wait for the worker to act (close or exit)
}

// pidGone reports whether pid no longer runs (absent, or a zombie).
func pidGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(after, "Z")
}

func TestWorkerEnvAndSlots(t *testing.T) {
	cfg := fakeConfig(t, 2, map[string]string{"FAKE_CUSTOM": "custom-value", "PORT": "1"})
	cfg.Dir = t.TempDir()
	h := startSupervisor(t, cfg, nil)
	slots := h.sup.Slots()
	for i, s := range slots {
		want := WorkerSlot{Slot: i, Name: "worker-" + strconv.Itoa(i), Address: "127.0.0.1:" + strconv.Itoa(cfg.PortBase+i)}
		if s != want {
			t.Errorf("slot %d = %+v, want %+v", i, s, want)
		}
		h.waitState(t, i, true)
		env := askEnv(t, s.Address)
		want2 := fakeEnv{Port: strconv.Itoa(cfg.PortBase + i), ID: strconv.Itoa(i), Workers: "2",
			Custom: "custom-value", Cwd: cfg.Dir, Pid: env.Pid}
		if env != want2 {
			t.Errorf("worker %d env = %+v, want %+v", i, env, want2)
		}
	}
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if err := h.sup.Run(context.Background()); !errors.Is(err, ErrSupervisorRunning) {
		t.Errorf("second Run = %v, want ErrSupervisorRunning", err)
	}
}

func TestWorkerReadyOnlyAfterListen(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	h := startSupervisor(t, fakeConfig(t, 1, map[string]string{"FAKE_GATE": gate}), nil)
	testkit.WaitFor(t, "worker waiting at its gate", func() bool { return len(h.entries("waiting for gate", 0)) > 0 })
	// The worker runs but does not listen: many polls must not report it.
	select {
	case got := <-h.states[0]:
		t.Fatalf("onState(%v) before the worker listens", got)
	case <-time.After(30 * h.sup.timing.readyPoll):
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h.waitState(t, 0, true)
	askEnv(t, h.sup.Slots()[0].Address) // it really accepts
}

func TestWorkerCrashRestartsSameSlot(t *testing.T) {
	h := startSupervisor(t, fakeConfig(t, 2, nil), nil)
	h.waitState(t, 0, true)
	h.waitState(t, 1, true)
	addr := h.sup.Slots()[0].Address
	before := askEnv(t, addr)

	send(t, addr, "crash")
	h.waitState(t, 0, false)
	h.waitState(t, 0, true)
	after := askEnv(t, addr)
	if after.Pid == before.Pid || after.ID != "0" {
		t.Errorf("after restart: pid %d id %s; before: pid %d", after.Pid, after.ID, before.Pid)
	}
	if got := h.sup.Restarts(0); got != 1 {
		t.Errorf("Restarts(0) = %d, want 1", got)
	}
	if got := h.sup.Restarts(1); got != 0 {
		t.Errorf("Restarts(1) = %d, want 0", got)
	}
	if n := len(h.states[1]); n != 0 {
		t.Errorf("worker 1 changed state %d times during worker 0's crash", n)
	}
	exits := h.entries("worker exited", 0)
	if len(exits) != 1 || exits[0].ContextMap()["exit_code"] != int64(3) || exits[0].ContextMap()["pid"] != int64(before.Pid) {
		t.Errorf("exit log = %v, want one with exit_code 3 and pid %d", exits, before.Pid)
	}
	restarts := h.entries("restarting worker", 0)
	if len(restarts) != 1 || restarts[0].ContextMap()["backoff"] != h.sup.timing.backoffMin {
		t.Errorf("restart log = %v, want one with backoff %v", restarts, h.sup.timing.backoffMin)
	}
}

func TestWorkerCrashLoopBacksOffAndSparesOthers(t *testing.T) {
	h := startSupervisor(t, fakeConfig(t, 2, map[string]string{"FAKE_CRASH_ID": "1"}), nil)
	h.waitState(t, 0, true)
	testkit.WaitFor(t, "5 restarts of worker 1", func() bool { return h.sup.Restarts(1) >= 5 })
	tm := h.sup.timing
	want := []time.Duration{tm.backoffMin, 2 * tm.backoffMin, 4 * tm.backoffMin, tm.backoffMax, tm.backoffMax}
	for i, e := range h.entries("restarting worker", 1)[:5] {
		if got := e.ContextMap()["backoff"]; got != want[i] {
			t.Errorf("restart %d: backoff %v, want %v", i+1, got, want[i])
		}
	}
	if n := len(h.states[1]); n != 0 {
		t.Errorf("crashing worker 1 was reported %d times; it never got ready", n)
	}
	if n, r := len(h.states[0]), h.sup.Restarts(0); n != 0 || r != 0 {
		t.Errorf("worker 0 disturbed: %d state changes, %d restarts", n, r)
	}
	askEnv(t, h.sup.Slots()[0].Address)
}

func TestWorkerBackoffSequence(t *testing.T) {
	tm := workerTiming{backoffMin: 100 * time.Millisecond, backoffMax: 30 * time.Second, stableAfter: time.Minute}
	var got []time.Duration
	var b time.Duration
	for range 11 {
		b = tm.nextBackoff(b, time.Second)
		got = append(got, b)
	}
	if got[0] != 100*time.Millisecond || got[1] != 200*time.Millisecond || got[8] != 25600*time.Millisecond || got[9] != 30*time.Second || got[10] != 30*time.Second {
		t.Errorf("backoff sequence = %v", got)
	}
	if b = tm.nextBackoff(b, time.Minute); b != tm.backoffMin {
		t.Errorf("after a stable minute backoff = %v, want %v", b, tm.backoffMin)
	}
}

func TestWorkerNeverReadyIsKilledAndRetried(t *testing.T) {
	cfg := fakeConfig(t, 1, map[string]string{"FAKE_NEVER_LISTEN": "1"})
	cfg.StartupTimeout = 300 * time.Millisecond
	h := startSupervisor(t, cfg, nil)
	testkit.WaitFor(t, "two startup timeouts", func() bool {
		return len(h.entries("worker not ready within startup timeout, killing it", 0)) >= 2 && h.sup.Restarts(0) >= 2
	})
	exits := h.entries("worker exited", 0)
	if len(exits) == 0 || exits[0].ContextMap()["signal"] != "killed" {
		t.Fatalf("exit logs = %v, want the first killed by SIGKILL", exits)
	}
	if pid := int(exits[0].ContextMap()["pid"].(int64)); !pidGone(pid) {
		t.Errorf("never-ready worker pid %d still runs", pid)
	}
	if n := len(h.states[0]); n != 0 {
		t.Errorf("never-ready worker was reported %d times", n)
	}
}

func TestWorkerStopTermThenKill(t *testing.T) {
	cfg := fakeConfig(t, 2, map[string]string{"FAKE_IGNORE_TERM_ID": "1"})
	cfg.StopTimeout = 1500 * time.Millisecond // room for worker 0 to exit on SIGTERM on a busy machine
	h := startSupervisor(t, cfg, nil)
	var pids []int
	for i, s := range h.sup.Slots() {
		h.waitState(t, i, true)
		pids = append(pids, askEnv(t, s.Address).Pid)
	}
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	for i, pid := range pids {
		h.waitState(t, i, false)
		if !pidGone(pid) {
			t.Errorf("worker %d (pid %d) still runs after Run returned", i, pid)
		}
	}
	if e := h.entries("worker stopped", 0); len(e) != 1 || e[0].ContextMap()["exit_code"] != int64(0) {
		t.Errorf("worker 0 stop log = %v, want exit_code 0 after SIGTERM", e)
	}
	if e := h.entries("got SIGTERM", 0); len(e) != 1 {
		t.Errorf("worker 0 did not log its SIGTERM: %v", e)
	}
	if e := h.entries("worker stopped", 1); len(e) != 1 || e[0].ContextMap()["signal"] != "killed" {
		t.Errorf("worker 1 stop log = %v, want signal killed", e)
	}
	if n0, n1 := len(h.entries("worker ignored SIGTERM, killing it", 0)), len(h.entries("worker ignored SIGTERM, killing it", 1)); n0 != 0 || n1 != 1 {
		t.Errorf("SIGKILL escalations: worker 0 %d, worker 1 %d; want 0 and 1", n0, n1)
	}
	if r := h.sup.Restarts(0) + h.sup.Restarts(1); r != 0 {
		t.Errorf("stopping counted %d restarts", r)
	}
}

func TestWorkerOutputForwarded(t *testing.T) {
	const long = maxWorkerLogLine + 1000
	h := startSupervisor(t, fakeConfig(t, 1, map[string]string{"FAKE_LONG_LINE": strconv.Itoa(long)}), nil)
	h.waitState(t, 0, true)
	check := func(msg, stream string) {
		t.Helper()
		testkit.WaitFor(t, "log line "+msg, func() bool { return len(h.entries(msg, 0)) > 0 })
		e := h.entries(msg, 0)[0]
		if e.LoggerName != "worker" || e.ContextMap()["stream"] != stream || e.Level != zapcore.InfoLevel {
			t.Errorf("line %.20q logged as %+v %v, want logger worker, stream %s", msg, e.Entry, e.ContextMap(), stream)
		}
	}
	check("hello from stderr", "stderr")
	pid := askEnv(t, h.sup.Slots()[0].Address).Pid
	check("pid="+strconv.Itoa(pid), "stdout")
	first := strings.Repeat("x", maxWorkerLogLine)
	check(first, "stdout")
	if h.entries(first, 0)[0].ContextMap()["continued"] != true {
		t.Errorf("first piece of a long line not marked continued")
	}
	check(strings.Repeat("x", long-maxWorkerLogLine), "stdout")
}

func TestWorkerUnixSocket(t *testing.T) {
	dir := t.TempDir()
	cfg := fakeConfig(t, 1, nil)
	cfg.SocketDir = filepath.Join(dir, "sockets")
	// A socket file left by a dead worker must not block the new one.
	if err := os.Mkdir(cfg.SocketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cfg.SocketDir, "worker-0.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	h := startSupervisor(t, cfg, nil)
	if got := h.sup.Slots()[0].Address; got != "unix:"+path {
		t.Fatalf("address = %q, want unix:%s", got, path)
	}
	h.waitState(t, 0, true)
	env := askEnv(t, "unix:"+path)
	if env.Socket != path || env.Port != "" || env.ID != "0" || env.Workers != "1" {
		t.Errorf("env = %+v, want SOCKET=%s and no PORT", env, path)
	}
}

// TestWorkerStartFailureRetried: a program that was there when the
// Supervisor was made (Validate checks it) and has gone when it starts is
// a failed start, logged with its fix and retried.
func TestWorkerStartFailureRetried(t *testing.T) {
	cfg := fakeConfig(t, 1, nil)
	prog := filepath.Join(t.TempDir(), "worker")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Command = []string{prog}
	h := newSupHarness(t, cfg)
	os.Remove(prog)
	h.run(t)
	testkit.WaitFor(t, "two restarts", func() bool { return h.sup.Restarts(0) >= 2 })
	e := h.entries("start worker", 0)
	if len(e) < 2 {
		t.Fatalf("start failures logged %d times, want >= 2", len(e))
	}
	if fix, _ := e[0].ContextMap()["fix"].(string); !strings.Contains(fix, "workers.command") {
		t.Errorf("start failure logged with fix %q, want one naming workers.command", fix)
	}
}

// TestWorkerDiesWithSupervisor SIGKILLs a process running a Supervisor and
// checks that Pdeathsig takes its worker down too.
func TestWorkerDiesWithSupervisor(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pidDir := t.TempDir()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), fakeWorkerEnv+"=supervisor", "FAKE_PID_DIR="+pidDir,
		"FAKE_PORT_BASE="+strconv.Itoa(testkit.FreePortBase(t, 1, workerPortsLo, workerPortsHi)))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("supervisor said %q", line)
		}
		ready <- err
	}()
	if err := testkit.Await(t, ready, "worker never got ready"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(pidDir, "0.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(string(b))
	if pidGone(pid) {
		t.Fatalf("worker %d is not running", pid)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	testkit.WaitFor(t, "the orphaned worker to die", func() bool { return pidGone(pid) })
}

// TestWorkerSocketDirMadeAtStart: NewSupervisor makes socket_dir, and one
// it cannot make fails it (so stickyd's start), naming the key.
func TestWorkerSocketDirMadeAtStart(t *testing.T) {
	dir := t.TempDir()
	cfg := fakeConfig(t, 1, nil)
	cfg.PortBase, cfg.SocketDir = 0, filepath.Join(dir, "a", "b")
	if _, err := NewSupervisor(cfg, zap.NewNop(), nil); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cfg.SocketDir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket_dir after NewSupervisor: %v, %v", fi, err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.SocketDir = filepath.Join(file, "sockets") // under a file: mkdir fails
	_, err := NewSupervisor(cfg, zap.NewNop(), nil)
	if !errors.Is(err, ErrWorkerConfig) || !strings.Contains(err.Error(), "workers.socket_dir: mkdir "+file+": not a directory") {
		t.Errorf("NewSupervisor = %v, want ErrWorkerConfig naming workers.socket_dir and the cause", err)
	}
}

func TestWorkerConfigValidate(t *testing.T) {
	long := "/tmp/" + strings.Repeat("d", 100)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.js"), []byte("//"), 0o644); err != nil { // not executable
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  WorkerConfig
		key  string
	}{
		{"no command", WorkerConfig{}, "workers.command"},
		{"unknown command", WorkerConfig{Command: []string{"stickyd-no-such-command"}}, "workers.command"},
		{"missing program", WorkerConfig{Command: []string{"/no/such/dir/app"}}, "workers.command: exec: \"/no/such/dir/app\": stat /no/such/dir/app: no such file or directory"},
		{"missing relative program", WorkerConfig{Command: []string{"./no-such-app"}, Dir: dir}, "workers.command: exec: \"" + dir + "/no-such-app\""},
		{"program not executable", WorkerConfig{Command: []string{"./app.js"}, Dir: dir}, "workers.command: exec: \"" + dir + "/app.js\": permission denied"},
		{"program a directory", WorkerConfig{Command: []string{"/tmp"}}, "workers.command: exec: \"/tmp\": is a directory"},
		{"missing dir", WorkerConfig{Command: []string{"sh"}, Dir: filepath.Join(dir, "gone")}, "workers.dir: stat " + dir + "/gone: no such file or directory"},
		{"dir a file", WorkerConfig{Command: []string{"sh"}, Dir: filepath.Join(dir, "app.js")}, "workers.dir: " + dir + "/app.js is not a directory"},
		{"negative count", WorkerConfig{Command: []string{"sh"}, Count: -1}, "workers.count"},
		{"ports overflow", WorkerConfig{Command: []string{"sh"}, Count: 3, PortBase: 65534}, "workers.port_base"},
		{"socket path too long", WorkerConfig{Command: []string{"sh"}, SocketDir: long}, "workers.socket_dir"},
		{"bad env name", WorkerConfig{Command: []string{"sh"}, Env: map[string]string{"A=B": "c"}}, "workers.env"},
		{"negative timeout", WorkerConfig{Command: []string{"sh"}, StopTimeout: -time.Second}, "workers.stop_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewSupervisor(tc.cfg, zap.NewNop(), nil)
			if !errors.Is(err, ErrWorkerConfig) || !strings.Contains(err.Error(), tc.key) {
				t.Errorf("NewSupervisor = %v, want ErrWorkerConfig naming %s", err, tc.key)
			}
		})
	}
}

func TestForwardWorkerOutputSplitsLongLinesBetweenCharacters(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	done := make(chan struct{})
	go func() {
		forwardWorkerOutput(r, zap.New(core), new(atomic.Bool))
		close(done)
	}()
	long := strings.Repeat("x", maxWorkerLogLine-1) + "é" + "yz" // é straddles the piece boundary
	fmt.Fprintf(w, "ab\r\n\n%s\nno newline at end", long)
	w.Close()
	testkit.Await(t, done, "forwarder did not end at EOF")
	var got []string
	for _, e := range logs.All() {
		got = append(got, fmt.Sprintf("%d:%v", len(e.Message), e.ContextMap()["continued"]))
	}
	want := []string{"2:<nil>", fmt.Sprintf("%d:true", maxWorkerLogLine-1), "4:<nil>", "17:<nil>"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("pieces (len:continued) = %v, want %v", got, want)
	}
	if all := logs.All(); all[1].Message+all[2].Message != long || all[2].Message != "éyz" {
		t.Errorf("long line not reassembled from its pieces")
	}
}

// Output without a newline (a prompt, binary garbage) is logged after
// partialLineWait while the pipe stays open, marked continued; the rest of
// the line follows as its own entry.
func TestForwardWorkerOutputFlushesPartialLine(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	core, logs := observer.New(zapcore.InfoLevel)
	go forwardWorkerOutput(r, zap.New(core), new(atomic.Bool))
	fmt.Fprint(w, "\x00\xffprompt> ")
	testkit.WaitFor(t, "the partial line", func() bool { return logs.Len() == 1 })
	e := logs.All()[0]
	if !strings.HasSuffix(e.Message, "prompt> ") || e.ContextMap()["continued"] != true {
		t.Errorf("partial line logged as %q %v", e.Message, e.ContextMap())
	}
	fmt.Fprint(w, "rest\n")
	testkit.WaitFor(t, "the rest of the line", func() bool { return logs.Len() == 2 })
	if e := logs.All()[1]; e.Message != "rest" {
		t.Errorf("rest logged as %q", e.Message)
	}
}

// wrapped runs cfg's command behind a shell that, like npm start, exits at
// once on SIGTERM while the app it started (in the same process group, so
// it gets the SIGTERM too) is still draining.
func wrapped(cfg WorkerConfig) WorkerConfig {
	cfg.Command = append([]string{"sh", "-c", `"$0" "$@"; exit $?`}, cfg.Command...)
	return cfg
}

// A worker behind a wrapper drains in full: the wrapper's exit on SIGTERM
// does not get the app SIGKILLed.
func TestWorkerStopWaitsForAppBehindWrapper(t *testing.T) {
	cfg := wrapped(fakeConfig(t, 1, map[string]string{"FAKE_DRAIN": "400ms"}))
	h := startSupervisor(t, cfg, nil)
	h.waitState(t, 0, true)
	app := askEnv(t, h.sup.Slots()[0].Address).Pid
	start := time.Now()
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Errorf("Run returned %v after the stop, before the app's 400ms drain ended", took)
	}
	if e := h.entries("drained", 0); len(e) != 1 {
		t.Errorf("the app did not finish its drain (SIGKILLed?); its lines: %v", h.entries("draining", 0))
	}
	if e := h.entries("worker exited, but processes of its group did not exit within stop_timeout of SIGTERM; killing them", 0); len(e) != 0 {
		t.Errorf("escalated: %v", e)
	}
	if !pidGone(app) {
		t.Errorf("the app (pid %d) still runs after Run returned", app)
	}
}

// An app behind a wrapper that outlasts stop_timeout is killed, with one
// line naming what was left.
func TestWorkerStopKillsAppBehindWrapperAfterTimeout(t *testing.T) {
	cfg := wrapped(fakeConfig(t, 1, map[string]string{"FAKE_DRAIN": "1h"}))
	cfg.StopTimeout = 500 * time.Millisecond
	h := startSupervisor(t, cfg, nil)
	h.waitState(t, 0, true)
	app := askEnv(t, h.sup.Slots()[0].Address).Pid
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	e := h.entries("worker exited, but processes of its group did not exit within stop_timeout of SIGTERM; killing them", 0)
	if len(e) != 1 {
		t.Fatalf("want one escalation line, got %v", e)
	}
	if left, _ := e[0].ContextMap()["processes"].(map[int]string); len(left) != 1 || left[app] == "" {
		t.Errorf("processes = %v, want the app (pid %d)", e[0].ContextMap()["processes"], app)
	}
	if len(h.entries("drained", 0)) != 0 {
		t.Error("the app drained for an hour?")
	}
	testkit.WaitFor(t, "the app to be gone", func() bool { return pidGone(app) })
}
