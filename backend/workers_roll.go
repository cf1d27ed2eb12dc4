package backend

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Rolling restart. A new version of the app is deployed by restarting the
// workers one slot at a time, each without a moment in which its clients
// have nowhere to go (Node's cluster and pm2 call it a reload):
//
//  1. the replacement starts beside the running worker, on the slot's
//     other address (a port or socket of its own: two processes cannot
//     listen on one port unless the app opts in);
//  2. once it accepts connections, the slot's backend moves to that
//     address (OnMove): the slot keeps its name, so the hash sends it the
//     same clients, and new connections reach the new process;
//  3. a second later (retireAfter) the old process gets SIGTERM (SIGKILL
//     after StopTimeout) and finishes its open connections meanwhile. The
//     second is for the connections it was handed just before the move:
//     a server that stops counts a connection whose first request it has
//     not read yet as idle and closes it (Node's server.close() does), so
//     each has that long to send its first request. It is also the
//     replacement's trial: one that exits within it (it listened, then
//     crashed) gives the slot back to the old process, which is still
//     there, and the rolling restart stops;
//  4. the next slot follows.
//
// A replacement that exits before it listens, or is not ready within
// StartupTimeout, is stopped, the old worker keeps serving, and the
// rolling restart ends there with the reason: a broken deploy takes
// nothing down.

// ErrRollingRestartRunning is returned by RollingRestart while another
// one runs.
var ErrRollingRestartRunning = errors.New("backend: a rolling restart is already running")

// errWorkerDown answers a replacement request for a slot whose worker is
// not running: its next start runs the command as it is now.
var errWorkerDown = errors.New("worker not running; its next start runs the command as it is now")

// RollingRestartResult says what a rolling restart did.
type RollingRestartResult struct {
	Replaced int // slots whose worker was replaced
	Skipped  int // slots whose worker was down (its next start runs the new command)
}

// OnMove sets the function told when a slot's worker moves to another
// address in a rolling restart, before the old worker is stopped (and
// back, when the replacement fails its trial): the caller routes the
// slot's new connections there. Call it before Run.
func (s *Supervisor) OnMove(f func(slot int, address string)) { s.onMove = f }

// OnStartFailed sets the function told when a slot's worker exits before
// it is ready, or is not ready in time, and no worker of that slot has
// been ready yet (the worker's own lines say why; it is retried as
// always). Call it before Run.
func (s *Supervisor) OnStartFailed(f func(slot int)) { s.onStartFailed = f }

// Replacements returns how many times the slot's worker has been replaced
// by a rolling restart; 0 for an unknown slot.
func (s *Supervisor) Replacements(slot int) int64 {
	if slot < 0 || slot >= len(s.workers) {
		return 0
	}
	return s.workers[slot].replacements.Load()
}

// RollingRestart replaces every running worker, one slot at a time (see
// above), and returns once the last replacement serves, or with the first
// error: a slot whose replacement did not become ready (the rest are left
// as they are, every slot still served), ctx ending, or Run ending. Only
// one runs at a time (ErrRollingRestartRunning). It needs Run to be
// running. A slot's replacement, once asked for, is carried out even if
// ctx ends first.
func (s *Supervisor) RollingRestart(ctx context.Context) (RollingRestartResult, error) {
	var res RollingRestartResult
	// A memory replacement is short: wait for it. Anything else refuses.
	for !s.busy.CompareAndSwap(busyNone, busyRolling) {
		if s.busy.Load() != busyMemory {
			return res, ErrRollingRestartRunning
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer s.busy.Store(busyNone)
	if !s.ran.Load() {
		return res, errors.New("backend: the supervisor is not running")
	}
	for _, w := range s.workers {
		done := make(chan error, 1)
		select {
		case w.replace <- done:
		case <-ctx.Done():
			return res, ctx.Err()
		case <-s.done: // a request left by an earlier call that Run never answered
			return res, errors.New("backend: workers stopped")
		}
		select {
		case err := <-done:
			switch {
			case errors.Is(err, errWorkerDown):
				res.Skipped++
				s.log.Info("rolling restart: worker not running, skipped", zap.Int("worker", w.slot.Slot), zap.NamedError("why", err))
			case err != nil:
				return res, fmt.Errorf("%s: %w", w.slot.Name, err)
			default:
				res.Replaced++
			}
		case <-ctx.Done():
			return res, ctx.Err()
		case <-s.done:
			return res, errors.New("backend: workers stopped")
		}
	}
	return res, nil
}

// answerPending answers a replacement request that came while w's worker
// was not running: the start that follows runs the command as it is now.
func (s *Supervisor) answerPending(w *supervisedWorker) {
	select {
	case done := <-w.replace:
		done <- errWorkerDown
	default:
	}
}

// replaceWorker starts the replacement of w's running worker old on the
// slot's other address and, once it is ready, moves the slot there. old
// keeps running for retireAfter: if the replacement exits meanwhile (it
// listened, then crashed), the slot moves back to old and an error says
// so. Otherwise old is stopped in the background, and replaceWorker
// returns the replacement and its logger. On an error old still serves.
func (s *Supervisor) replaceWorker(ctx context.Context, sp *workerSpawner, w *supervisedWorker, old *workerProc, oldLog *zap.Logger, why string) (*workerProc, *zap.Logger, error) {
	if w.altErr != nil {
		return nil, nil, fmt.Errorf("no address for a replacement: %w", w.altErr)
	}
	if r := w.retiree; r != nil { // the last one replaced may still hold the address
		select {
		case <-r.gone:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	from := w.cur
	a := w.addrs[1-from]
	p, err := s.spawn(sp, w, a)
	if errors.Is(err, ErrWorkerPortInUse) {
		fix := "stop the program that holds it, or restart stickyd (it picks free ports again)"
		if s.cfg.PortBase != 0 {
			fix = "stop the program that holds it, or choose a port_base with port_base .. port_base + 2 x count - 1 free (a restart)"
		}
		return nil, nil, fmt.Errorf("the replacement's address %s: %w (fix: %s)", a.address, err, fix)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("start the replacement: %w", err)
	}
	log := s.log.With(zap.Int("worker", w.slot.Slot), zap.Int("pid", p.pid))
	// The old worker may die while its replacement starts (the one over
	// max_memory is the OOM killer's pick): its slot then takes no
	// connections until the replacement is ready, rather than send them
	// to a dead address.
	oldDown := s.watchOld(old, w.slot.Slot)
	state := s.awaitReady(ctx, a, p, log)
	down := oldDown()
	switch state {
	case workerReady:
	case workerStartTimeout:
		listening := listeningAddrs(p.pid)
		p.signal(syscall.SIGKILL)
		<-p.exited
		err = fmt.Errorf("the replacement was not ready within startup_timeout (%v): expected to %s; listening on %v",
			s.cfg.startupTimeout(), s.expectation(a), listening)
	case workerExitedEarly:
		err = fmt.Errorf("the replacement exited before it listened (%s): expected to %s",
			exitReason(p), s.expectation(a))
	case workerStartCancelled:
		p.stop(log, s.cfg.stopTimeout())
		err = fmt.Errorf("stopped while the replacement started: %w", ctx.Err())
	}
	if err != nil {
		p.cleanup(s.timing.outputGrace)
		p.logExit(log.With(zap.Bool("replacement", true)), true)
		return nil, nil, err
	}
	ready := time.Now()
	s.moveTo(w, 1-from)
	if down {
		s.onState(w.slot.Slot, true)
	}
	log.Debug("replacement took over its slot; the old worker stays a while", zap.String("address", a.address),
		zap.Int("old_pid", old.pid), zap.Duration("for", s.timing.retireAfter))
	t := time.NewTimer(s.timing.retireAfter)
	defer t.Stop()
	select {
	case <-t.C:
	case <-old.exited: // ended by itself meanwhile: the replacement stays
	case <-ctx.Done():
	case <-p.exited:
		select {
		case <-old.exited: // both gone: the slot restarts as after any exit
		default:
			s.moveTo(w, from)
			p.cleanup(s.timing.outputGrace)
			p.logExit(log.With(zap.Bool("replacement", true)), false)
			return nil, nil, fmt.Errorf("the replacement exited %v after it took over (%s); the slot is back on its old worker (pid %d)",
				time.Since(ready).Round(time.Millisecond), exitReason(p), old.pid)
		}
	}
	log.Info("worker replaced", zap.String("address", a.address), zap.Int("old_pid", old.pid),
		zap.Duration("startup", ready.Sub(p.started)), zap.String("reason", why))
	w.retiree = old
	s.retirees.Add(1)
	s.retiring.Go(func() {
		defer s.retirees.Add(-1)
		old.stop(oldLog, s.cfg.stopTimeout())
		old.cleanup(s.timing.outputGrace)
		old.logExit(oldLog.With(zap.Bool("replaced", true)), true)
	})
	return p, log, nil
}

// moveTo makes w's address number i the slot's: Slots reports it, and
// onMove routes the slot there.
func (s *Supervisor) moveTo(w *supervisedWorker, i int) {
	s.mu.Lock()
	w.cur = i
	w.slot.Address = w.addrs[i].address
	s.mu.Unlock()
	s.onMove(w.slot.Slot, w.addrs[i].address)
}

// exitReason says how an exited process ended: its exit code or signal.
func exitReason(p *workerProc) string {
	ps := p.cmd.ProcessState
	if ps == nil { // Wait failed: the status was lost
		return "exit status unknown"
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit code %d", ps.ExitCode())
}

// watchOld marks slot down (onState) if old exits before the returned
// function is called; that function stops the watch and reports whether
// it did.
func (s *Supervisor) watchOld(old *workerProc, slot int) (stop func() bool) {
	quit, done := make(chan struct{}), make(chan bool, 1)
	go func() {
		select {
		case <-old.exited:
			s.onState(slot, false)
			done <- true
		case <-quit:
			done <- false
		}
	}()
	return func() bool {
		close(quit)
		return <-done
	}
}
