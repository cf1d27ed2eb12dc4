package daemon

import (
	"context"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/discovery"
	"go.uber.org/zap"
)

// requestReload asks the reloader for a reload (SIGHUP) without waiting
// for it: a slow reload (a big file, DNS) never delays the signal loop, so
// SIGTERM is acted on at once. A SIGHUP that arrives while a reload is
// pending is folded into it.
func (d *daemon) requestReload() {
	select {
	case d.reloads <- struct{}{}:
	default:
	}
}

// reloader runs the requested reloads one at a time until d.reloads is
// closed (at shutdown).
func (d *daemon) reloader() {
	for range d.reloads {
		d.reload()
	}
}

// reload re-reads the config (SIGHUP). A valid config replaces the backend
// set, reusing the Backend values that did not change, so no established
// connection is touched; an invalid one is logged and the config in force
// stays.
func (d *daemon) reload() {
	start := time.Now()
	d.notify.reloading()
	defer func() { // reloaded, or rejected: serving on either way
		if d.notify != nil {
			d.notify.ready(d.status())
		}
	}()
	d.log.Info("reloading config")
	cfg, err := d.load()
	if err != nil {
		d.log.Error("reload rejected; the running config stays in force", zap.Error(err))
		return
	}
	if ignored := config.RestartKeys(d.boot, cfg); len(ignored) > 0 {
		d.log.Warn("reload: these settings need a restart (or a SIGUSR2 upgrade) and were ignored",
			zap.Strings("keys", ignored))
	}
	answers := d.reloadDNS(cfg)
	access, keep, err := d.openAccess(cfg) // reopened: logrotate may have moved the file
	if err != nil {
		d.log.Error("reload rejected; the running config stays in force", zap.Error(err))
		return
	}

	old, set, ok := d.install(cfg, answers)
	if !ok {
		access.Close(0)
		return
	}
	if !keep {
		d.useAccess(access)
	}
	added, removed := setDiff(old, set)
	d.log.Info("config reloaded", zap.Strings("added", added), zap.Strings("removed", removed),
		zap.Int("backends", len(set.Backends())), zap.Duration("took", time.Since(start)))
}

// install makes cfg the config in force: its backend set and its loops.
// It reports false, and changes nothing, when the set cannot be built or
// shutdown has begun.
func (d *daemon) install(cfg *config.Config, answers map[string][]string) (old, set *backend.Set, ok bool) {
	d.mu.Lock()
	if d.stopping {
		d.mu.Unlock()
		return nil, nil, false
	}
	old = d.srv.Backends()
	set, err := d.buildSet(cfg, answers, old)
	if err != nil {
		d.mu.Unlock()
		d.log.Error("reload rejected; the running config stays in force", zap.Error(err))
		return nil, nil, false
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
		return old, set, true
	}
	d.loops = l
	return old, set, true
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
