package daemon

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/discovery"
	"go.uber.org/zap"
)

// The backend set is rebuilt from three sources: the static [[backend]]
// tables of the config in force, the latest answers for its dns backends,
// and the worker slots (fixed at start). Every rebuild reuses the Backend
// values whose name and address did not change, so their state (draining,
// health, readiness) and their open connections carry over.

// memberSpecs is the backend list: cfg's static backends, the addresses
// of its dns backends in answers, and the worker slots. It is the one
// place the list is built, for the daemon and for RoutingSet (lookup).
func memberSpecs(cfg *config.Config, answers map[string][]string, workers []backend.Spec) []backend.Spec {
	specs := staticSpecs(cfg)
	specs = append(specs, dnsSpecs(cfg, answers, specs)...)
	return append(specs, workers...)
}

// RoutingSet is the backend set cfg routes by, every backend up: what
// stickyd lookup asks. Its dns backends are resolved now (a failure is
// passed to dnsErr, and those backends are left out); the worker slots
// are named worker-0..worker-<count-1>, as the live proxy names them.
func RoutingSet(ctx context.Context, cfg *config.Config, dnsErr func(error)) (*backend.Set, error) {
	var answers map[string][]string
	if targets := cfg.DNSTargets(); len(targets) > 0 {
		var err error
		if answers, err = newResolver(cfg).ResolveAll(ctx, targets); err != nil {
			dnsErr(err)
		}
	}
	var workers []backend.Spec
	if cfg.Workers != nil {
		for i := range cfg.Workers.WorkerCount() {
			workers = append(workers, backend.Spec{Name: backend.WorkerName(i), Weight: 1})
		}
	}
	nop := zap.NewNop()
	return newSet(cfg, memberSpecs(cfg, answers, workers), nil, nop)
}

// staticSpecs lists cfg's [[backend]] tables that have an address.
func staticSpecs(cfg *config.Config) []backend.Spec {
	var specs []backend.Spec
	for _, b := range cfg.Backends {
		if b.DNS == "" {
			specs = append(specs, backend.Spec{Name: b.BackendName(), Address: b.Address, Weight: b.BackendWeight()})
		}
	}
	return specs
}

// dnsSpecs turns the answers for cfg's dns backends into backends named by
// their address. An address already named by taken (or by an earlier dns
// backend) is skipped.
func dnsSpecs(cfg *config.Config, answers map[string][]string, taken []backend.Spec) []backend.Spec {
	seen := make(map[string]bool, len(taken))
	for _, s := range taken {
		seen[s.Name] = true
	}
	var specs []backend.Spec
	for _, b := range cfg.Backends {
		if b.DNS == "" {
			continue
		}
		for _, addr := range answers[b.DNS] {
			if seen[addr] {
				continue
			}
			seen[addr] = true
			specs = append(specs, backend.Spec{Name: addr, Address: addr, Weight: b.BackendWeight()})
		}
	}
	return specs
}

// buildSet builds the set for cfg and answers, reusing the Backend values
// of current (nil at start). Once stickyd listens, a set with a backend
// that reaches its own listener is refused (errSelfLoop).
func (d *daemon) buildSet(cfg *config.Config, answers map[string][]string, current *backend.Set) (*backend.Set, error) {
	specs := memberSpecs(cfg, answers, d.workers)
	var reuse []*backend.Backend
	if current != nil {
		reuse = current.Backends()
	}
	var isSelf func(netip.AddrPort) bool
	if d.self != nil {
		isSelf = d.self.is
	}
	set, err := newSet(cfg, specs, isSelf, d.log, reuse...)
	if err != nil {
		return nil, err
	}
	if err := d.self.check(set.Backends()); err != nil {
		return nil, err
	}
	return set, nil
}

func newResolver(cfg *config.Config) *discovery.Resolver { return discovery.NewResolver(cfg.DNSServer) }

// firstDNS resolves cfg's dns backends before stickyd listens. While no
// backend at all is known (only dns backends, none resolved), it retries
// every dns_interval until ctx ends: a proxy that could route nowhere
// stays out of its load balancer's rotation instead of refusing clients.
func (d *daemon) firstDNS(ctx context.Context, cfg *config.Config) map[string][]string {
	targets := cfg.DNSTargets()
	if len(targets) == 0 {
		return nil
	}
	r := newResolver(cfg)
	for {
		answers, err := r.ResolveAll(ctx, targets)
		if err != nil {
			d.log.Warn("dns backends did not resolve", zap.Error(err), zap.String("fix", discovery.Fix))
		}
		if len(answers) > 0 || len(targets) < len(cfg.Backends) || len(d.workers) > 0 {
			return answers
		}
		d.log.Warn("no backend yet; resolving dns backends again before listening", zap.Duration("in", cfg.DNSRefresh()))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.DNSRefresh()):
		}
	}
}

// applyDNS installs new dns answers found by the watcher of cfg, unless a
// reload has replaced cfg meanwhile.
func (d *daemon) applyDNS(cfg *config.Config, answers map[string][]string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg != cfg {
		return
	}
	old := d.srv.Backends()
	set, err := d.buildSet(cfg, answers, old)
	if err != nil {
		d.log.Error("dns change not applied", zap.Error(err))
		return
	}
	d.dns = answers
	d.srv.SetBackends(set)
	added, removed := setDiff(old, set)
	d.log.Info("backends changed by dns", zap.Strings("added", added), zap.Strings("removed", removed),
		zap.Int("backends", len(set.Backends())))
}

// setDiff returns the names in b and not in a, and in a and not in b.
func setDiff(a, b *backend.Set) (added, removed []string) {
	names := func(s *backend.Set) map[string]bool {
		out := make(map[string]bool, len(s.Backends()))
		for _, x := range s.Backends() {
			out[x.Name] = true
		}
		return out
	}
	an, bn := names(a), names(b)
	for _, x := range b.Backends() {
		if !an[x.Name] {
			added = append(added, x.Name)
		}
	}
	for _, x := range a.Backends() {
		if !bn[x.Name] {
			removed = append(removed, x.Name)
		}
	}
	return added, removed
}

// loops are the background loops of one config: the health checker and
// the DNS watcher. A reload stops them and starts those of the new config.
type loops struct {
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// startLoops starts cfg's loops. known are the dns answers in force.
func (d *daemon) startLoops(cfg *config.Config) *loops {
	ctx, cancel := context.WithCancel(context.Background())
	l := &loops{cancel: cancel}
	hc := backend.NewHealthChecker(healthConfig(cfg), d.srv.Backends, d.log.Named("health"))
	l.done.Go(func() { hc.Run(ctx) })
	if targets := cfg.DNSTargets(); len(targets) > 0 {
		w := &discovery.Watcher{Resolver: newResolver(cfg), Targets: targets,
			Interval: cfg.DNSRefresh(), Log: d.log.Named("dns")}
		d.mu.Lock()
		known := d.dns
		d.mu.Unlock()
		l.done.Go(func() { w.Run(ctx, known, func(a map[string][]string) { d.applyDNS(cfg, a) }) })
	}
	return l
}

func (l *loops) stop() {
	if l == nil {
		return
	}
	l.cancel()
	l.done.Wait()
}

// stopLoops stops the loops in force (at shutdown); a reload that finishes
// later installs nothing.
func (d *daemon) stopLoops() {
	d.mu.Lock()
	l := d.loops
	d.loops = nil
	d.stopping = true
	d.mu.Unlock()
	if l != nil {
		l.stop()
	}
}

// healthConfig maps [health] to the checker's config.
func healthConfig(cfg *config.Config) backend.HealthConfig {
	h := cfg.Health
	return backend.HealthConfig{
		Mode: h.Check, Interval: cfg.HealthInterval(), Timeout: cfg.HealthTimeout(),
		Rise: cfg.HealthRise(), Fall: cfg.HealthFall(), Path: cfg.HealthPath(), ExpectStatus: h.ExpectStatus,
		SendProxy: cfg.HealthSendProxy(),
	}
}
