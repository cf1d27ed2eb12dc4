package backend

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// moves records a Supervisor's OnMove calls.
type moves struct {
	mu  sync.Mutex
	got []string // "slot address"
}

func (m *moves) record(slot int, address string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.got = append(m.got, strconv.Itoa(slot)+" "+address)
}

func (m *moves) all() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.got...)
}

// rollConfig is fakeConfig with room for the replacements' ports.
func rollConfig(t *testing.T, count int, env map[string]string) WorkerConfig {
	cfg := fakeConfig(t, count, env)
	cfg.PortBase = testkit.FreePortBase(t, 2*count, workerPortsLo, workerPortsHi)
	return cfg
}

// TestWorkerRollingRestart: every slot's worker is replaced by a new
// process on the slot's other address, which is announced (OnMove) before
// the old process is stopped; the slots never go out of rotation; a
// second rolling restart brings them back to their first addresses.
func TestWorkerRollingRestart(t *testing.T) {
	for _, mode := range []string{"tcp", "unix"} {
		t.Run(mode, func(t *testing.T) {
			cfg := rollConfig(t, 2, nil)
			var first, second []string // each slot's addresses
			for i := range 2 {
				if mode == "unix" {
					continue
				}
				first = append(first, "127.0.0.1:"+strconv.Itoa(cfg.PortBase+i))
				second = append(second, "127.0.0.1:"+strconv.Itoa(cfg.PortBase+2+i))
			}
			if mode == "unix" {
				cfg.PortBase, cfg.SocketDir = 0, t.TempDir()
				for i := range 2 {
					first = append(first, "unix:"+filepath.Join(cfg.SocketDir, "worker-"+strconv.Itoa(i)+".sock"))
					second = append(second, "unix:"+filepath.Join(cfg.SocketDir, "worker-"+strconv.Itoa(i)+".alt.sock"))
				}
			}
			h := newSupHarness(t, cfg)
			var mv moves
			h.sup.OnMove(mv.record)
			h.run(t)
			h.waitState(t, 0, true)
			h.waitState(t, 1, true)

			var pids []int
			for i, s := range h.sup.Slots() {
				if s.Address != first[i] {
					t.Fatalf("slot %d at %s, want %s", i, s.Address, first[i])
				}
				pids = append(pids, askEnv(t, s.Address).Pid)
			}
			res, err := h.sup.RollingRestart(context.Background())
			if err != nil || res != (RollingRestartResult{Replaced: 2}) {
				t.Fatalf("RollingRestart = %+v, %v; want 2 replaced", res, err)
			}
			if got, want := mv.all(), []string{"0 " + second[0], "1 " + second[1]}; strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("OnMove calls %v, want %v", got, want)
			}
			for i, s := range h.sup.Slots() {
				if s.Address != second[i] {
					t.Errorf("slot %d at %s after the rolling restart, want %s", i, s.Address, second[i])
				}
				env := askEnv(t, s.Address)
				if env.Pid == pids[i] || env.ID != strconv.Itoa(i) {
					t.Errorf("slot %d: pid %d id %s after the rolling restart; before: pid %d", i, env.Pid, env.ID, pids[i])
				}
				if mode == "tcp" && "127.0.0.1:"+env.Port != second[i] || mode == "unix" && "unix:"+env.Socket != second[i] {
					t.Errorf("slot %d's replacement was told PORT=%q SOCKET=%q, want %s", i, env.Port, env.Socket, second[i])
				}
				testkit.WaitFor(t, "the replaced worker gone", func() bool { return pidGone(pids[i]) })
				if n := len(h.states[i]); n != 0 {
					t.Errorf("slot %d changed state %d times during the rolling restart", i, n)
				}
				if got := h.sup.Replacements(i); got != 1 {
					t.Errorf("Replacements(%d) = %d, want 1", i, got)
				}
				if got := h.sup.Restarts(i); got != 0 {
					t.Errorf("Restarts(%d) = %d, want 0 (a replacement is not a restart)", i, got)
				}
				if e := h.entries("worker replaced", i); len(e) != 1 || e[0].ContextMap()["old_pid"] != int64(pids[i]) {
					t.Errorf("slot %d: worker replaced lines %v, want one with old_pid %d", i, e, pids[i])
				}
				if e := h.entries("worker exited", i); len(e) != 0 {
					t.Errorf("slot %d: a replaced worker logged as exited (a warning): %v", i, e)
				}
			}

			if _, err := h.sup.RollingRestart(context.Background()); err != nil {
				t.Fatalf("second RollingRestart: %v", err)
			}
			for i, s := range h.sup.Slots() {
				if s.Address != first[i] {
					t.Errorf("slot %d at %s after the second rolling restart, want %s", i, s.Address, first[i])
				}
				askEnv(t, s.Address)
			}
			if err := h.stop(t); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// faultyRun is a rolling restart of two fake workers whose replacements
// fail (faultyRoll).
type faultyRun struct {
	h      *supHarness
	mv     *moves
	fault  string       // the file that turns the fault on
	before []WorkerSlot // the slots before the rolling restart
	pid0   int          // slot 0's worker before it
	res    RollingRestartResult
	err    error
}

// faultyRoll runs two fake workers with the fake worker's fault variable
// key pointing at a file, makes the file once they are ready (so that
// their replacements have the fault), and runs a rolling restart.
func faultyRoll(t *testing.T, key string, tweak func(*workerTiming)) faultyRun {
	t.Helper()
	fault := filepath.Join(t.TempDir(), "fault")
	f := faultyRun{h: newSupHarness(t, rollConfig(t, 2, map[string]string{key: fault})), mv: &moves{}, fault: fault}
	if tweak != nil {
		tweak(&f.h.sup.timing)
	}
	f.h.sup.OnMove(f.mv.record)
	f.h.run(t)
	f.h.waitState(t, 0, true)
	f.h.waitState(t, 1, true)
	f.before = f.h.sup.Slots()
	f.pid0 = askEnv(t, f.before[0].Address).Pid
	if err := os.WriteFile(fault, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f.res, f.err = f.h.sup.RollingRestart(context.Background())
	return f
}

// TestWorkerRollingRestartBrokenDeploy: a replacement that exits before it
// listens is not moved to, the old worker keeps serving at its address,
// and the rolling restart stops there, naming the slot and the cause.
func TestWorkerRollingRestartBrokenDeploy(t *testing.T) {
	f := faultyRoll(t, "FAKE_BROKEN", nil)
	if f.err == nil || !strings.Contains(f.err.Error(), "worker-0") || !strings.Contains(f.err.Error(), "exited before it listened (exit code 3)") {
		t.Fatalf("RollingRestart error %v, want worker-0's replacement that exited with code 3", f.err)
	}
	if f.res.Replaced != 0 || len(f.mv.all()) != 0 {
		t.Errorf("replaced %d, moves %v; want none", f.res.Replaced, f.mv.all())
	}
	if got := f.h.sup.Slots(); got[0] != f.before[0] || got[1] != f.before[1] {
		t.Errorf("slots %v after a failed rolling restart, want %v", got, f.before)
	}
	if env := askEnv(t, f.before[0].Address); env.Pid != f.pid0 {
		t.Errorf("slot 0 answered by pid %d, want the old worker %d", env.Pid, f.pid0)
	}
	if n := len(f.h.states[0]) + len(f.h.states[1]); n != 0 {
		t.Errorf("%d state changes during a failed rolling restart", n)
	}
	// The deploy fixed, the next one goes through.
	os.Remove(f.fault)
	if res, err := f.h.sup.RollingRestart(context.Background()); err != nil || res.Replaced != 2 {
		t.Fatalf("RollingRestart after the fix = %+v, %v", res, err)
	}
}

// TestWorkerRollingRestartSkipsDownAndRunsOnce: a slot whose worker is down
// is skipped (its next start runs the new command), and a second rolling
// restart while one runs is refused.
func TestWorkerRollingRestartSkipsDownAndRunsOnce(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h := newSupHarness(t, rollConfig(t, 2, map[string]string{"FAKE_CRASH_ID": "1", "FAKE_GATE": gate}))
	h.run(t)
	h.waitState(t, 0, true)
	testkit.WaitFor(t, "worker 1 crashing", func() bool { return len(h.entries("restarting worker", 1)) > 0 })

	os.Remove(gate) // worker 0's replacement waits at the gate
	type result struct {
		res RollingRestartResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := h.sup.RollingRestart(context.Background())
		done <- result{res, err}
	}()
	testkit.WaitFor(t, "the replacement waiting at its gate", func() bool { return len(h.entries("waiting for gate", 0)) >= 2 })
	if _, err := h.sup.RollingRestart(context.Background()); !errors.Is(err, ErrRollingRestartRunning) {
		t.Errorf("a second RollingRestart meanwhile = %v, want ErrRollingRestartRunning", err)
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := testkit.Await(t, done, "RollingRestart did not return")
	if r.err != nil || r.res != (RollingRestartResult{Replaced: 1, Skipped: 1}) {
		t.Errorf("RollingRestart = %+v, %v; want 1 replaced, 1 skipped", r.res, r.err)
	}
}

// TestWorkerRollingRestartOldServesUntilRetired: a replaced worker keeps
// serving at its old address for retireAfter after the slot moved (the
// connections it was handed just before the move send their requests
// meanwhile), and the next slot waits for that; stopping the supervisor
// does not.
func TestWorkerRollingRestartOldServesUntilRetired(t *testing.T) {
	h := newSupHarness(t, rollConfig(t, 2, nil))
	h.sup.timing.retireAfter = time.Minute
	moved := make(chan string, 4)
	h.sup.OnMove(func(slot int, address string) { moved <- strconv.Itoa(slot) + " " + address })
	h.run(t)
	h.waitState(t, 0, true)
	h.waitState(t, 1, true)
	old := h.sup.Slots()
	oldPid := askEnv(t, old[0].Address).Pid
	done := make(chan error, 1)
	go func() {
		_, err := h.sup.RollingRestart(context.Background())
		done <- err
	}()
	m := testkit.Await(t, moved, "slot 0 did not move")
	if !strings.HasPrefix(m, "0 ") {
		t.Fatalf("first move %q, want slot 0's", m)
	}
	if env := askEnv(t, old[0].Address); env.Pid != oldPid {
		t.Fatalf("the old address answered by pid %d, want the replaced worker %d", env.Pid, oldPid)
	}
	if env := askEnv(t, strings.TrimPrefix(m, "0 ")); env.Pid == oldPid {
		t.Fatal("the new address answered by the old worker")
	}
	if len(moved) != 0 || h.sup.Slots()[1] != old[1] {
		t.Fatal("slot 1 moved before slot 0's old worker was retired")
	}
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	testkit.Await(t, done, "RollingRestart did not return once Run had")
	if !pidGone(oldPid) {
		t.Errorf("the replaced worker %d still runs after Run returned", oldPid)
	}
}

// TestWorkerRollingRestartCrashAfterTakeover: a replacement that listens,
// takes over its slot, then exits within retireAfter gives the slot back
// to the old worker, which is still there; the rolling restart stops with
// the reason, and the next slot is not touched.
func TestWorkerRollingRestartCrashAfterTakeover(t *testing.T) {
	f := faultyRoll(t, "FAKE_CRASH_AFTER", func(tm *workerTiming) {
		tm.retireAfter = time.Minute // the crash comes 50 ms after listening
	})
	if f.err == nil || !strings.Contains(f.err.Error(), "worker-0: the replacement exited") ||
		!strings.Contains(f.err.Error(), "after it took over (exit code 4); the slot is back on its old worker (pid "+strconv.Itoa(f.pid0)+")") {
		t.Fatalf("RollingRestart = %+v, %v; want worker-0 back on its old worker", f.res, f.err)
	}
	if got := f.mv.all(); len(got) != 2 || got[1] != "0 "+f.before[0].Address {
		t.Errorf("moves %v, want slot 0 there and back", got)
	}
	if got := f.h.sup.Slots(); got[0] != f.before[0] || got[1] != f.before[1] {
		t.Errorf("slots %v, want %v", got, f.before)
	}
	if env := askEnv(t, f.before[0].Address); env.Pid != f.pid0 {
		t.Errorf("slot 0 answered by pid %d, want its old worker %d", env.Pid, f.pid0)
	}
	if f.res.Replaced != 0 || f.h.sup.Replacements(0) != 0 || f.h.sup.Restarts(0) != 0 {
		t.Errorf("replaced %d, Replacements(0) %d, Restarts(0) %d; want 0", f.res.Replaced, f.h.sup.Replacements(0), f.h.sup.Restarts(0))
	}
	if n := len(f.h.states[0]) + len(f.h.states[1]); n != 0 {
		t.Errorf("%d state changes, want none", n)
	}
	if e := f.h.entries("worker exited", 0); len(e) != 1 || e[0].ContextMap()["replacement"] != true {
		t.Errorf("worker exited lines %v, want one for the replacement", e)
	}
}

// TestWorkerRollingRestartAfterRun: once Run has returned, RollingRestart
// fails at once, twice (the first leaves its request unanswered).
func TestWorkerRollingRestartAfterRun(t *testing.T) {
	h := newSupHarness(t, rollConfig(t, 1, nil))
	if _, err := h.sup.RollingRestart(context.Background()); err == nil {
		t.Error("RollingRestart before Run: no error")
	}
	h.run(t)
	h.waitState(t, 0, true)
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		done := make(chan error, 1)
		go func() {
			_, err := h.sup.RollingRestart(context.Background())
			done <- err
		}()
		if err := testkit.Await(t, done, "RollingRestart after Run hangs"); err == nil {
			t.Errorf("RollingRestart %d after Run: no error", i+1)
		}
	}
}

// TestWorkerRollingRestartPortTaken: a replacement's port that another
// program holds stops the rolling restart, naming the port and what to
// do, the old workers serving on.
func TestWorkerRollingRestartPortTaken(t *testing.T) {
	cfg := rollConfig(t, 2, nil)
	taken := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.PortBase+2)) // slot 0's second port
	testkit.Listen(t, taken)
	h := startSupervisor(t, cfg, nil)
	h.waitState(t, 0, true)
	h.waitState(t, 1, true)
	before := h.sup.Slots()
	_, err := h.sup.RollingRestart(context.Background())
	if !errors.Is(err, ErrWorkerPortInUse) || !strings.Contains(err.Error(), "worker-0: the replacement's address "+taken) ||
		!strings.Contains(err.Error(), "port_base + 2 x count - 1 free") {
		t.Fatalf("RollingRestart = %v, want worker-0's second port %s in use, with the fix", err, taken)
	}
	if got := h.sup.Slots(); got[0] != before[0] || got[1] != before[1] {
		t.Errorf("slots %v, want %v", got, before)
	}
	askEnv(t, before[0].Address)
}

// TestWorkerOldDiesWhileReplacementStarts: the old worker dies while its
// replacement has not listened yet: its slot leaves the rotation at once
// (rather than have connections dialled to a dead address), and comes back
// on the replacement once it listens. The death counts as no restart.
func TestWorkerOldDiesWhileReplacementStarts(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h := newSupHarness(t, rollConfig(t, 1, map[string]string{"FAKE_GATE": gate}))
	h.run(t)
	h.waitState(t, 0, true)
	old := askEnv(t, h.sup.Slots()[0].Address)
	os.Remove(gate) // the replacement waits at the gate
	done := make(chan error, 1)
	go func() {
		res, err := h.sup.RollingRestart(context.Background())
		if err == nil && res.Replaced != 1 {
			err = errors.New("not replaced")
		}
		done <- err
	}()
	testkit.WaitFor(t, "the replacement waiting at its gate", func() bool { return len(h.entries("waiting for gate", 0)) >= 2 })
	send(t, h.sup.Slots()[0].Address, "crash")
	h.waitState(t, 0, false) // out of rotation while nothing listens
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := testkit.Await(t, done, "RollingRestart did not return"); err != nil {
		t.Fatalf("RollingRestart: %v", err)
	}
	h.waitState(t, 0, true) // back, on the replacement
	if now := askEnv(t, h.sup.Slots()[0].Address); now.Pid == old.Pid || now.Port == old.Port {
		t.Errorf("slot 0 serves pid %d on port %s; the old one was pid %d on %s", now.Pid, now.Port, old.Pid, old.Port)
	}
	if r := h.sup.Restarts(0); r != 0 {
		t.Errorf("%d restarts counted", r)
	}
}
