package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/backend"
	"go.uber.org/zap"
)

// rollStopping is the outcome of a run that stopping cut short or kept
// from beginning.
var rollStopping = admin.RollOutcome{Result: admin.RollStopped, Error: "stickyd is stopping"}

// newRollRequests holds the rolling restarts asked for (SIGUSR1, POST
// /workers/restart).
func newRollRequests() *requests[admin.RollOutcome] { return newRequests(rollStopping) }

// requestRoll asks the roller for a rolling restart of the launched
// workers without waiting for it (SIGUSR1).
func (d *daemon) requestRoll() {
	if d.sup == nil {
		d.log.Warn("SIGUSR1 restarts launched workers, and this stickyd launches none; nothing done",
			zap.String("fix", "to reload the config send SIGHUP; to upgrade stickyd itself, SIGUSR2"))
		return
	}
	d.rolls.request(nil)
}

// rollWorkers asks for a rolling restart and returns where its outcome
// will be sent (POST /workers/restart).
func (d *daemon) rollWorkers() <-chan admin.RollOutcome { return d.rolls.ask() }

// roller runs the requested rolling restarts one at a time until ctx ends
// (at shutdown).
func (d *daemon) roller(ctx context.Context) { d.rolls.serve(ctx, d.roll) }

// roll runs one rolling restart and logs its outcome.
func (d *daemon) roll(ctx context.Context) admin.RollOutcome {
	start := time.Now()
	d.log.Info("rolling restart of the workers", zap.Int("workers", len(d.workers)))
	res, err := d.sup.RollingRestart(ctx)
	took := time.Since(start)
	out := admin.RollOutcome{Replaced: res.Replaced, Skipped: res.Skipped, Took: took.Round(time.Millisecond).String()}
	fields := []zap.Field{zap.Int("replaced", res.Replaced), zap.Int("skipped", res.Skipped), zap.Duration("took", took)}
	switch {
	case errors.Is(err, backend.ErrRollingRestartRunning): // an upgrade holds the workers
		out.Result, out.Error = admin.RollNotStarted, "an upgrade (SIGUSR2) is under way"
		out.Fix = "if the upgrade fails, ask again (SIGUSR1, or POST /workers/restart); if it succeeds, the new process has started new workers"
		d.log.Warn("rolling restart not started: an upgrade (SIGUSR2) is under way", zap.String("fix", out.Fix))
	case ctx.Err() != nil:
		out.Result, out.Error = rollStopping.Result, rollStopping.Error
		d.log.Info("rolling restart stopped: stickyd is stopping", fields...)
	case err != nil:
		out.Result, out.Error = admin.RollFailed, err.Error()
		fields = append(fields, zap.Error(err))
		if !errors.Is(err, backend.ErrWorkerPortInUse) { // that error says what to free
			out.Fix = "see the replacement's own lines (worker=N) for why it did not start; fix the app, then ask again (SIGUSR1, or POST /workers/restart)"
			fields = append(fields, zap.String("fix", out.Fix))
		}
		d.log.Error("rolling restart stopped; the workers not yet replaced keep running as they were", fields...)
	default:
		out.Result = admin.RollDone
		d.log.Info("rolling restart done", fields...)
	}
	return out
}
