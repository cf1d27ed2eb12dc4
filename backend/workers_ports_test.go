package backend

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"go.uber.org/zap"
)

// slotPort returns the port of a TCP worker slot.
func slotPort(t *testing.T, s WorkerSlot) int {
	t.Helper()
	_, port, err := net.SplitHostPort(s.Address)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return n
}

// Without PortBase, each Supervisor gets its own block of consecutive free
// ports below the ephemeral range, held against other programs (another
// Supervisor included) until its workers start on them.
func TestWorkerAutoPortsReservedAndDisjoint(t *testing.T) {
	cfgA := fakeConfig(t, 3, nil)
	cfgA.PortBase = 0
	h := newSupHarness(t, cfgA)
	a := h.sup
	b, err := NewSupervisor(cfgA, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]string{}
	for _, sup := range []*Supervisor{a, b} {
		base := slotPort(t, sup.Slots()[0])
		for i, s := range sup.Slots() {
			p := slotPort(t, s)
			if p != base+i || p < autoPortMin || p >= ephemeralLow() {
				t.Errorf("slot %d port %d: want %d, in %d..%d", i, p, base+i, autoPortMin, ephemeralLow()-1)
			}
			if other, dup := seen[p]; dup {
				t.Errorf("port %d given to %s and %s", p, other, s.Name)
			}
			seen[p] = s.Name
			if ln, err := net.Listen("tcp", s.Address); err == nil {
				ln.Close()
				t.Errorf("%s: another program could bind the reserved port %d", s.Name, p)
			}
		}
	}
	h.run(t)
	for i := range a.Slots() {
		h.waitState(t, i, true)
		if env := askEnv(t, a.Slots()[i].Address); env.Port != strconv.Itoa(slotPort(t, a.Slots()[i])) {
			t.Errorf("slot %d got PORT=%s", i, env.Port)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.Run(ctx) // releases b's reservations
	for _, s := range b.Slots() {
		ln, err := net.Listen("tcp", s.Address)
		if err != nil {
			t.Fatalf("%s: port not released after Run: %v", s.Name, err)
		}
		ln.Close()
	}
}

// An explicit port that another program listens on is refused before any
// worker starts, naming the slot and the port.
func TestWorkerExplicitPortInUse(t *testing.T) {
	cfg := fakeConfig(t, 3, nil)
	busy := cfg.PortBase + 2
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(busy))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = NewSupervisor(cfg, zap.NewNop(), nil)
	if !errors.Is(err, ErrWorkerPortInUse) || !strings.Contains(err.Error(), "worker-2") ||
		!strings.Contains(err.Error(), "127.0.0.1:"+strconv.Itoa(busy)) {
		t.Fatalf("NewSupervisor = %v, want ErrWorkerPortInUse naming worker-2 and port %d", err, busy)
	}
}

// A port taken by another program while its worker is down: the worker is
// not started (no EADDRINUSE crash loop), one clear line per try, with
// backoff; the other worker keeps serving; once the port is free the
// worker comes back.
// The fix depends on who chose the port: the operator (port_base) or
// stickyd (no port_base: a restart picks free ports again).
func TestWorkerPortTakenWhileDown(t *testing.T) {
	for _, tc := range []struct {
		name, fix string
		auto      bool
	}{
		{"port_base", "choose another port_base", false},
		{"ports picked by stickyd", "restart stickyd (it picks free ports again)", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fakeConfig(t, 2, nil)
			if tc.auto {
				cfg.PortBase = 0
			}
			portTakenWhileDown(t, cfg, tc.fix)
		})
	}
}

func portTakenWhileDown(t *testing.T, cfg WorkerConfig, fix string) {
	// A backoff long enough for the test to take the port first.
	h := startSupervisor(t, cfg, func(tm *workerTiming) { tm.backoffMin, tm.backoffMax = 300*time.Millisecond, 300*time.Millisecond })
	h.waitState(t, 0, true)
	h.waitState(t, 1, true)
	addr := h.sup.Slots()[1].Address
	send(t, addr, "crash")
	h.waitState(t, 1, false)
	var squatter net.Listener
	testkit.WaitFor(t, "the crashed worker's port to be free", func() bool {
		var err error
		squatter, err = net.Listen("tcp", addr)
		return err == nil
	})
	testkit.WaitFor(t, "two refused starts", func() bool {
		return len(h.entries("worker port in use by another program; worker not started", 1)) >= 2
	})
	e := h.entries("worker port in use by another program; worker not started", 1)[0].ContextMap()
	if e["address"] != addr || !strings.Contains(e["fix"].(string), fix) {
		t.Errorf("log fields %v, want the address %s and a fix saying %q", e, addr, fix)
	}
	if n := len(h.entries("worker exited", 1)); n != 1 {
		t.Errorf("%d worker exits logged, want only the crash: the squatted port must not start a worker", n)
	}
	askEnv(t, h.sup.Slots()[0].Address) // the other worker serves
	squatter.Close()
	h.waitState(t, 1, true)
	askEnv(t, addr)
}

// A worker that listens on another port is logged once with where it
// listens and what was expected, then killed at the startup timeout.
func TestWorkerWrongPortLogged(t *testing.T) {
	cfg := fakeConfig(t, 1, map[string]string{"FAKE_WRONG_PORT": "1"})
	cfg.StartupTimeout = 2 * time.Second
	h := startSupervisor(t, cfg, nil)
	testkit.WaitFor(t, "the startup timeout", func() bool {
		return len(h.entries("worker not ready within startup timeout, killing it", 0)) >= 1
	})
	warn := h.entries("worker listens, but not on its address; it gets no traffic until it does", 0)
	if len(warn) != 1 {
		t.Fatalf("%d misplaced-listener warnings, want 1", len(warn))
	}
	m := warn[0].ContextMap()
	on, _ := m["listening_on"].([]any)
	if len(on) != 1 || !strings.HasPrefix(on[0].(string), "127.0.0.1:") || on[0] == h.sup.Slots()[0].Address ||
		!strings.Contains(m["expected"].(string), "PORT="+strconv.Itoa(cfg.PortBase)) {
		t.Errorf("warning fields %v", m)
	}
}

// A worker that exits at once is logged as not ready, with what was
// expected of it; a worker printing binary garbage is logged as text and
// keeps its slot.
func TestWorkerExitsAtOnceAndGarbageOutput(t *testing.T) {
	h := startSupervisor(t, fakeConfig(t, 2, map[string]string{"FAKE_CRASH_ID": "1", "FAKE_GARBAGE": "1"}), nil)
	h.waitState(t, 0, true)
	testkit.WaitFor(t, "two early exits", func() bool { return len(h.entries("worker exited", 1)) >= 2 })
	m := h.entries("worker exited", 1)[0].ContextMap()
	if m["ready"] != false || !strings.Contains(m["expected"].(string), "PORT=") || m["exit_code"] != int64(3) {
		t.Errorf("early exit fields %v", m)
	}
	askEnv(t, h.sup.Slots()[0].Address)
	var garbage bool
	for _, e := range h.logs.All() {
		if strings.Contains(e.Message, "forged") {
			garbage = e.ContextMap()["worker"] != nil
		}
	}
	if !garbage {
		t.Error("the garbage output was not forwarded as a worker log line")
	}
}
