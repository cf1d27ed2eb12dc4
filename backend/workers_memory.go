package backend

import (
	"context"
	"errors"
	"time"

	"github.com/stickyd/stickyd/internal/reaper"
	"go.uber.org/zap"
)

// Memory. Every memoryEvery the supervisor reads the resident memory of
// each ready worker's process group (Memory; the metric). With MaxMemory
// set, a worker above it at memoryOverChecks readings in a row is replaced
// as a rolling restart replaces it: the replacement starts on the slot's
// other address, takes the slot's new connections once it listens, and
// the old worker drains (stop_timeout). No client is refused or moves to
// another slot: the zero-downtime answer to a leak, where a cgroup's OOM
// killer would cut every connection of the worker it picks.
//
// A worker that was over the limit at every reading since it became
// ready is not replaced: its replacement would be over it as soon, so the
// limit is below what the app needs, and an error line says to raise it.
// After that, or after a replacement that failed (the app on disk does not
// start), the slot waits memoryRetry before the next try. While an upgrade
// hands the workers over, none is replaced.

// memoryReading is a slot's worker over MaxMemory: its pid and bytes,
// and whether it has been over the limit since it became ready.
type memoryReading struct {
	pid       int
	rss       int64
	fromStart bool
}

// Memory returns the resident memory of the slot's worker (its process
// group) at the last reading, in bytes; 0 while it is not ready, or for
// an unknown slot.
func (s *Supervisor) Memory(slot int) int64 {
	if slot < 0 || slot >= len(s.workers) {
		return 0
	}
	return s.workers[slot].rss.Load()
}

// WorkerStatus is a worker slot as it is now (Status).
type WorkerStatus struct {
	WorkerSlot
	// Pid is the ready worker's process id; 0 while none is ready.
	Pid int
	// ReadySince is when that worker became ready (or took the slot over
	// in a replacement); zero while none is ready.
	ReadySince time.Time
	// Memory is its resident memory at the last reading (Memory).
	Memory int64
	// Restarts, Replacements and MemoryReplacements count the slot's
	// restarts after an exit, rolling-restart replacements and max_memory
	// replacements.
	Restarts, Replacements, MemoryReplacements int64
	// AdapterNamespaces are the socket.io namespaces whose cluster adapter
	// that worker has spoken in over its IPC channel (workers_bus.go),
	// sorted; none for an app without the adapter, or one behind a
	// wrapper that took the channel.
	AdapterNamespaces []string
}

// Status returns every slot as it is now. Safe to call concurrently with
// Run.
func (s *Supervisor) Status() []WorkerStatus {
	out := make([]WorkerStatus, 0, len(s.workers))
	for i, slot := range s.Slots() {
		w := s.workers[i]
		st := WorkerStatus{WorkerSlot: slot, Pid: int(w.pid.Load()), Memory: w.rss.Load(),
			Restarts: w.restarts.Load(), Replacements: w.replacements.Load(), MemoryReplacements: w.memReplacements.Load()}
		if ns := w.readySince.Load(); ns != 0 && st.Pid != 0 {
			st.ReadySince = time.Unix(0, ns)
		}
		if s.bus != nil && st.Pid != 0 {
			st.AdapterNamespaces = s.bus.namespaces(st.Pid)
		}
		out = append(out, st)
	}
	return out
}

// MemoryReplacements returns how many times the slot's worker was
// replaced for being over MaxMemory; 0 for an unknown slot.
func (s *Supervisor) MemoryReplacements(slot int) int64 {
	if slot < 0 || slot >= len(s.workers) {
		return 0
	}
	return s.workers[slot].memReplacements.Load()
}

// watchMemory reads the workers' memory every memoryEvery until ctx ends,
// and tells a slot whose worker stays over MaxMemory (its memHigh).
func (s *Supervisor) watchMemory(ctx context.Context) {
	every := s.timing.memoryEvery
	if every <= 0 {
		every = defaultWorkerTiming.memoryEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	m := &memoryWatch{s: s, over: make([]int, len(s.workers)), belowSeen: make([]int, len(s.workers)),
		last: make([]int, len(s.workers))}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.read()
		}
	}
}

// memoryWatch is watchMemory's state, per slot.
type memoryWatch struct {
	s         *Supervisor
	over      []int // readings in a row above the limit
	belowSeen []int // the pid last read at or below the limit
	last      []int // the pid read last
	warned    bool  // /proc could not be read, and the log said so
}

// read takes one reading of every ready worker.
func (m *memoryWatch) read() {
	s := m.s
	pids := make([]int, len(s.workers)) // read once: a slot may change its worker meanwhile
	groups := map[int]bool{}
	for i, w := range s.workers {
		if pids[i] = int(w.pid.Load()); pids[i] != 0 {
			groups[pids[i]] = true
		}
	}
	if len(groups) == 0 {
		return
	}
	rss, err := reaper.GroupsRSS(groups)
	if err != nil {
		if !m.warned {
			m.warned = true
			s.log.Warn("cannot read the workers' memory; max_memory is not enforced", zap.Error(err),
				zap.String("fix", "mount /proc (a container runtime does)"))
		}
		return
	}
	for i, pid := range pids {
		if pid != 0 {
			m.judge(i, pid, rss[pid])
		}
	}
}

// judge records slot i's worker pid at v bytes, and tells the slot when
// it has been over MaxMemory memoryOverChecks readings in a row.
func (m *memoryWatch) judge(i, pid int, v int64) {
	w, limit := m.s.workers[i], m.s.cfg.MaxMemory
	if w.pid.Load() == int64(pid) { // still that worker's: the gauge is its
		w.rss.Store(v)
	}
	if pid != m.last[i] { // another worker: its own count
		m.last[i], m.over[i] = pid, 0
	}
	if limit <= 0 || v <= limit {
		m.over[i], m.belowSeen[i] = 0, pid
		return
	}
	if m.over[i]++; m.over[i] >= memoryOverChecks {
		m.over[i] = 0
		select {
		case w.memHigh <- memoryReading{pid: pid, rss: v, fromStart: m.belowSeen[i] != pid}:
		default: // one is pending already
		}
	}
}

// memoryOverChecks is how many readings in a row over MaxMemory get a
// worker replaced: a short peak (a large request) is not a leak.
const memoryOverChecks = 2

// replaceForMemory is serve's answer to a reading of its worker p over
// MaxMemory: it replaces p (replaceWorker) unless p has been over the
// limit since its start, an upgrade holds the workers, or the slot waits
// after a failed try. It returns the
// process that serves the slot now, its logger and whether it is new.
func (s *Supervisor) replaceForMemory(ctx context.Context, sp *workerSpawner, w *supervisedWorker, p *workerProc, log *zap.Logger, m memoryReading) (*workerProc, *zap.Logger, bool) {
	if m.pid != p.pid || ctx.Err() != nil || time.Now().Before(w.memRetryAt) {
		return p, log, false
	}
	fields := []zap.Field{zap.Int64("rss", m.rss), zap.Int64("max_memory", s.cfg.MaxMemory)}
	refuse := func(msg string) (*workerProc, *zap.Logger, bool) {
		w.memRetryAt = time.Now().Add(s.timing.memoryRetry)
		log.Error(msg, append(fields, zap.Duration("uptime", time.Since(p.started)), zap.Duration("retry_in", s.timing.memoryRetry),
			zap.String("fix", "raise workers.max_memory above what the app needs once started and under load"))...)
		return p, log, false
	}
	if m.fromStart {
		return refuse("worker over max_memory since its start; not replaced, as its replacement would be too")
	}
	if !w.memReplacedAt.IsZero() && time.Since(w.memReplacedAt) < s.timing.memoryRetry {
		return refuse("worker over max_memory again soon after it replaced one that was; not replaced: the limit is below what the app needs")
	}
	// One thing moves the workers at a time: a rolling restart or an
	// upgrade's handoff first; this reading comes again.
	if !s.busy.CompareAndSwap(busyNone, busyMemory) {
		return p, log, false
	}
	defer s.busy.Store(busyNone)
	log.Warn("worker over max_memory; replacing it", fields...)
	np, nlog, err := s.replaceWorker(ctx, sp, w, p, log, "max_memory")
	if err != nil && ctx.Err() != nil {
		return p, log, false // stopping
	}
	if errors.Is(err, ErrWorkerPortInUse) && s.cfg.Handoff != nil {
		// An upgrade's new process: the old one's worker is still on the
		// slot's other address, until that process has drained.
		w.memRetryAt = time.Now().Add(s.timing.memoryRetry)
		log.Info("worker over max_memory; not replaced yet: the previous stickyd's worker still holds the address its replacement needs (the upgrade is finishing)",
			append(fields, zap.Duration("retry_in", s.timing.memoryRetry))...)
		return p, log, false
	}
	if err != nil {
		w.memRetryAt = time.Now().Add(s.timing.memoryRetry)
		log.Error("replacing a worker over max_memory failed; it serves on", append(fields, zap.Error(err),
			zap.Duration("retry_in", s.timing.memoryRetry),
			zap.String("fix", "see the replacement's own lines (worker=N) for why it did not start"))...)
		return p, log, false
	}
	w.memReplacements.Add(1)
	w.memReplacedAt = time.Now()
	return np, nlog, true
}
