package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/discovery"
	"go.uber.org/zap"
)

// reloadStopping is the outcome of a reload that stopping kept from
// beginning.
var reloadStopping = admin.ReloadOutcome{Result: admin.ReloadStopped, Error: "stickyd is stopping"}

// newReloadRequests holds the reloads asked for (SIGHUP, POST /reload).
func newReloadRequests() *requests[admin.ReloadOutcome] { return newRequests(reloadStopping) }

// requestReload asks the reloader for a reload (SIGHUP) without waiting
// for it: a slow reload (a big file, DNS) never delays the signal loop, so
// SIGTERM is acted on at once. A SIGHUP that arrives while a reload is
// pending is folded into it.
func (d *daemon) requestReload() { d.reloads.request(nil) }

// reloadConfig asks for a reload and returns where its outcome will be sent
// (POST /reload).
func (d *daemon) reloadConfig() <-chan admin.ReloadOutcome { return d.reloads.ask() }

// reloader runs the requested reloads one at a time until ctx ends (at
// shutdown). A reload in flight then finishes on its own (install checks
// d.stopping).
func (d *daemon) reloader(ctx context.Context) {
	d.reloads.serve(ctx, func(context.Context) admin.ReloadOutcome { return d.reload() })
}

// reloadFix is the fix of a rejected reload.
const reloadFix = "correct the config and reload again (stickyd check-config FILE checks it first); the config in force stays meanwhile"

// reload re-reads the config (SIGHUP). A valid config replaces the backend
// set, reusing the Backend values that did not change, so no established
// connection is touched; an invalid one is logged and the config in force
// stays. It returns the outcome.
func (d *daemon) reload() admin.ReloadOutcome {
	start := time.Now()
	d.notify.reloading()
	defer func() { // reloaded, or rejected: serving on either way
		if d.notify != nil {
			d.notify.ready(d.status())
		}
	}()
	d.log.Info("reloading config")
	rejected := func(err error) admin.ReloadOutcome {
		d.log.Error("reload rejected; the running config stays in force", zap.Error(err))
		return admin.ReloadOutcome{Result: admin.ReloadRejected, Error: err.Error(), Fix: reloadFix, Took: time.Since(start).String()}
	}
	cfg, err := d.load()
	if err != nil {
		return rejected(err)
	}
	ignored := config.RestartKeys(d.boot, cfg)
	if len(ignored) > 0 {
		d.log.Warn("reload: these settings need a restart (or a SIGUSR2 upgrade) and were ignored",
			zap.Strings("keys", ignored))
	}
	answers := d.reloadDNS(cfg)
	access, keep, err := d.openAccess(cfg) // reopened: logrotate may have moved the file
	if err != nil {
		return rejected(err)
	}

	old, set, err := d.install(cfg, answers)
	if err != nil {
		access.Close(0)
		if errors.Is(err, errStopping) {
			return reloadStopping
		}
		return rejected(err)
	}
	if !keep {
		d.useAccess(access)
	}
	added, removed := setDiff(old, set)
	took := time.Since(start)
	d.log.Info("config reloaded", zap.Strings("added", added), zap.Strings("removed", removed),
		zap.Int("backends", len(set.Backends())), zap.Duration("took", took))
	return admin.ReloadOutcome{Result: admin.ReloadDone, Added: added, Removed: removed, Backends: len(set.Backends()),
		Ignored: ignored, Took: took.String()}
}

// errStopping: shutdown has begun, nothing more is installed.
var errStopping = errors.New("stickyd is stopping")

// install makes cfg the config in force: its backend set and its loops.
// It returns an error, and changes nothing, when the set cannot be built
// or shutdown has begun (errStopping).
func (d *daemon) install(cfg *config.Config, answers map[string][]string) (old, set *backend.Set, err error) {
	d.mu.Lock()
	if d.stopping {
		d.mu.Unlock()
		return nil, nil, errStopping
	}
	old = d.srv.Backends()
	set, err = d.buildSet(cfg, answers, old)
	if err != nil {
		d.mu.Unlock()
		return nil, nil, err
	}
	d.cfg, d.dns = cfg, answers
	d.srv.SetBackends(set)
	d.srv.SetMaxPerClient(cfg.MaxConnectionsPerClient)
	d.srv.SetMaxRatePerClient(cfg.MaxConnectionRatePerClient)
	oldLoops := d.loops
	d.loops = nil
	d.mu.Unlock()

	oldLoops.stop()
	l := d.startLoops(cfg)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping { // stopLoops has run meanwhile
		l.stop()
		return old, set, nil
	}
	d.loops = l
	return old, set, nil
}

// reloadDNS resolves cfg's dns backends. A name that fails keeps the
// answer it had, if any.
func (d *daemon) reloadDNS(cfg *config.Config) map[string][]string {
	targets := cfg.DNSTargets()
	if len(targets) == 0 {
		return nil
	}
	answers, err := newResolver(cfg).ResolveAll(context.Background(), targets)
	if err != nil {
		d.log.Warn("reload: dns backends did not resolve", zap.Error(err), zap.String("fix", discovery.Fix))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string][]string, len(targets))
	for _, t := range targets {
		if a, ok := answers[t]; ok {
			out[t] = a
		} else if prev, ok := d.dns[t]; ok {
			out[t] = prev
		}
	}
	return out
}
