package backend

import (
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// memoryTiming reads memory every 50 ms; a slot that did not replace its
// worker does not look again for an hour.
func memoryTiming(tm *workerTiming) {
	tm.memoryEvery, tm.memoryRetry = 50*time.Millisecond, time.Hour
	tm.retireAfter = 100 * time.Millisecond
}

// A worker that leaks past MaxMemory is replaced beside itself, on the
// slot's other address, and drains; the other slot is untouched, and the
// memory read is the worker's.
func TestWorkerOverMaxMemoryReplaced(t *testing.T) {
	cfg := fakeConfig(t, 2, nil)
	cfg.MaxMemory = 300 << 20
	h := startSupervisor(t, cfg, memoryTiming)
	for i := range 2 {
		h.waitState(t, i, true)
	}
	before0, before1 := askEnv(t, h.sup.Slots()[0].Address), askEnv(t, h.sup.Slots()[1].Address)
	testkit.WaitFor(t, "a first reading", func() bool { return h.sup.Memory(0) > 1<<20 && h.sup.Memory(1) > 1<<20 })
	if m := h.sup.Memory(0); m > cfg.MaxMemory {
		t.Fatalf("worker 0 reads %d bytes before it leaks, over the limit of %d", m, cfg.MaxMemory)
	}
	send(t, h.sup.Slots()[0].Address, "grow 400")
	testkit.WaitFor(t, "worker 0 replaced", func() bool { return h.sup.MemoryReplacements(0) == 1 })
	after0 := askEnv(t, h.sup.Slots()[0].Address)
	if after0.Pid == before0.Pid || after0.Port == before0.Port {
		t.Errorf("slot 0 after the replacement: pid %d port %s, before pid %d port %s", after0.Pid, after0.Port, before0.Pid, before0.Port)
	}
	testkit.WaitFor(t, "the leaking worker gone", func() bool { return pidGone(before0.Pid) })
	if e := h.entries("worker over max_memory; replacing it", 0); len(e) != 1 || e[0].ContextMap()["rss"].(int64) <= cfg.MaxMemory {
		t.Errorf("the over-limit line: %v", e)
	}
	if e := h.entries("worker replaced", 0); len(e) != 1 || e[0].ContextMap()["reason"] != "max_memory" {
		t.Errorf("the replaced line: %v", e)
	}
	testkit.WaitFor(t, "the new worker read", func() bool { m := h.sup.Memory(0); return m > 0 && m < cfg.MaxMemory })
	if a := askEnv(t, h.sup.Slots()[1].Address); a.Pid != before1.Pid || h.sup.MemoryReplacements(1) != 0 {
		t.Errorf("slot 1 changed: pid %d (was %d), %d replacements", a.Pid, before1.Pid, h.sup.MemoryReplacements(1))
	}
	st := h.sup.Status()
	if len(st) != 2 || st[0].Pid != after0.Pid || st[0].MemoryReplacements != 1 || st[0].ReadySince.IsZero() ||
		st[0].Memory <= 0 || st[1].Pid != before1.Pid || st[1].MemoryReplacements != 0 {
		t.Errorf("Status = %+v; want slot 0 on pid %d, replaced once for memory, slot 1 on pid %d", st, after0.Pid, before1.Pid)
	}
	if h.sup.Replacements(0) != 0 || h.sup.Restarts(0) != 0 {
		t.Errorf("counted as a rolling restart (%d) or a restart (%d)", h.sup.Replacements(0), h.sup.Restarts(0))
	}
}

// A worker over the limit since its start is not replaced (its
// replacement would be too): one error line says to raise the limit, and
// the slot waits memoryRetry before it looks again.
func TestWorkerOverMaxMemorySinceStartNotReplaced(t *testing.T) {
	cfg := fakeConfig(t, 1, map[string]string{"FAKE_GROW_AT_START": "400"})
	cfg.MaxMemory = 300 << 20
	h := startSupervisor(t, cfg, memoryTiming)
	h.waitState(t, 0, true)
	pid := askEnv(t, h.sup.Slots()[0].Address).Pid
	const msg = "worker over max_memory since its start; not replaced, as its replacement would be too"
	testkit.WaitFor(t, "the refusal", func() bool { return len(h.entries(msg, 0)) == 1 })
	time.Sleep(300 * time.Millisecond) // six more readings: no second line within memoryRetry
	if n := len(h.entries(msg, 0)); n != 1 || h.sup.MemoryReplacements(0) != 0 || askEnv(t, h.sup.Slots()[0].Address).Pid != pid {
		t.Errorf("%d refusal lines, %d replacements; want 1 and 0, the same worker", n, h.sup.MemoryReplacements(0))
	}
	if fix, _ := h.entries(msg, 0)[0].ContextMap()["fix"].(string); fix == "" {
		t.Error("no fix")
	}
}
