package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/stickyd/stickyd/backend"
	"go.uber.org/zap"
)

// requestRoll asks the roller for a rolling restart of the launched
// workers (SIGUSR1) without waiting for it. One that arrives while another
// runs is folded into one more, which follows it: a deploy made during a
// rolling restart reaches every worker.
func (d *daemon) requestRoll() {
	if d.sup == nil {
		d.log.Warn("SIGUSR1 restarts launched workers, and this stickyd launches none; nothing done",
			zap.String("fix", "to reload the config send SIGHUP; to upgrade stickyd itself, SIGUSR2"))
		return
	}
	select {
	case d.rolls <- struct{}{}:
	default:
	}
}

// roller runs the requested rolling restarts one at a time until ctx ends
// (at shutdown).
func (d *daemon) roller(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.rolls:
		}
		start := time.Now()
		d.log.Info("rolling restart of the workers", zap.Int("workers", len(d.workers)))
		res, err := d.sup.RollingRestart(ctx)
		fields := []zap.Field{zap.Int("replaced", res.Replaced), zap.Int("skipped", res.Skipped),
			zap.Duration("took", time.Since(start))}
		switch {
		case errors.Is(err, backend.ErrRollingRestartRunning): // an upgrade holds the workers
			d.log.Warn("rolling restart not started: an upgrade (SIGUSR2) is under way",
				zap.String("fix", "if the upgrade fails, send SIGUSR1 again; if it succeeds, the new process has started new workers"))
		case ctx.Err() != nil:
			d.log.Info("rolling restart stopped: stickyd is stopping", fields...)
		case err != nil:
			fields = append(fields, zap.Error(err))
			if !errors.Is(err, backend.ErrWorkerPortInUse) { // that error says what to free
				fields = append(fields, zap.String("fix", "see the replacement's own lines (worker=N) for why it did not start; fix the app, then send SIGUSR1 again"))
			}
			d.log.Error("rolling restart stopped; the workers not yet replaced keep running as they were", fields...)
		default:
			d.log.Info("rolling restart done", fields...)
		}
	}
}
