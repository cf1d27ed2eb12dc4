package daemon

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/balancer"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/server"
	"go.uber.org/zap"
)

func serverOptions(cfg *config.Config, budget fdBudget) server.Options {
	return server.Options{
		Trusted:             cfg.Trusted(),
		HeaderTimeout:       cfg.HeaderTimeout(),
		SendProxy:           cfg.ProxyVersion(),
		ForwardTLVs:         cfg.ForwardTLVs,
		ClientIPHeader:      cfg.ClientIPHeader,
		IgnoreMissingHeader: cfg.IgnoreMissingHeader,
		Idle:                cfg.Idle(),
		Linger:              cfg.HalfCloseTimeout.Duration,
		FirstByte:           cfg.FirstByteTimeout.Duration,
		MaxConnections:      budget.conns,
		MaxPerClient:        cfg.MaxConnectionsPerClient,
		MaxRatePerClient:    cfg.MaxConnectionRatePerClient,
	}
}

// newSet builds the backend set from specs, reusing the Backend values of
// reuse (with their state and counters) where name and address match.
// isSelf, if not nil, tells stickyd's own listen address.
func newSet(cfg *config.Config, specs []backend.Spec, isSelf func(netip.AddrPort) bool, log *zap.Logger, reuse ...*backend.Backend) (*backend.Set, error) {
	opts := backend.Options{
		DialTimeout:      cfg.DialTimeout(),
		Cooldown:         cfg.Cooldown(),
		EjectAfter:       cfg.EjectAfter(),
		EjectAfterCloses: cfg.EjectAfterCloses(),
		BalanceFactor:    cfg.BalanceFactor,
		Balancer:         balancer.Options{Key: cfg.KeyMode()},
		IsSelf:           isSelf,
	}
	return backend.NewSet(specs, opts, log.Named("backend"), reuse...)
}

// workerSpecs returns the worker slots of [workers] (out of rotation until
// ready) and their supervisor, or nothing without [workers]. handoff is
// where an old process's workers listen (an upgrade's new process), or
// nil. onReady is called with the slot each time a worker becomes ready.
func workerSpecs(cfg *config.Config, log *zap.Logger, handoff *backend.Handoff, current func() *backend.Set, onReady func(slot int)) ([]backend.Spec, *backend.Supervisor, error) {
	if cfg.Workers == nil {
		return nil, nil, nil
	}
	wc := WorkerConfig(cfg.Workers)
	wc.SendProxy = cfg.HealthSendProxy() // readiness probes open like health checks
	wc.Handoff = handoff
	var sup *backend.Supervisor
	sup, err := backend.NewSupervisor(wc, log.Named("worker"), func(slot int, ready bool) {
		if b := current().ByName(sup.Slots()[slot].Name); b != nil {
			b.SetReady(ready)
		}
		if ready {
			onReady(slot)
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("workers: %w", err)
	}
	// A rolling restart moves a slot to its replacement's address. The
	// Backend keeps its Spec (a reload matches it by that) and is dialed at
	// the new address; being ready there, it also leaves any cool-down.
	sup.OnMove(func(slot int, address string) {
		if b := current().ByName(sup.Slots()[slot].Name); b != nil {
			b.SetAddress(address)
			b.SetReady(true)
		}
	})
	var specs []backend.Spec
	for _, w := range sup.Slots() {
		specs = append(specs, backend.Spec{Name: w.Name, Address: w.Address, Weight: 1, NotReady: true})
	}
	return specs, sup, nil
}

// WorkerConfig maps [workers] to the supervisor's config. A command named
// "stickyd" runs this very binary (the hello worker demo).
func WorkerConfig(w *config.Workers) backend.WorkerConfig {
	argv := append([]string(nil), w.Command...)
	if len(argv) > 0 && argv[0] == "stickyd" {
		if self, err := os.Executable(); err == nil {
			argv[0] = self
		}
	}
	return backend.WorkerConfig{
		Command: argv, Count: w.WorkerCount(), PortBase: w.PortBase, SocketDir: w.SocketDir,
		Env: w.Env, Dir: w.Dir, StartupTimeout: w.StartupTimeout.Duration, StopTimeout: w.StopTimeout.Duration,
		MaxMemory: int64(w.MaxMemory), InheritOutput: w.Output == "inherit", NodeIPC: w.IPC != "none",
	}
}

func newEngine(cfg *config.Config, budget fdBudget) (relay.Engine, error) {
	if cfg.EngineName() == "goroutine" {
		return relay.NewGoroutineEngine(), nil
	}
	// The server's Done only counts and releases (atomics, a buffered
	// channel) and logs at debug level: it may run on the loops.
	return relay.NewEpollEngine(relay.EpollOptions{MaxPipes: budget.pipes, InlineDone: true})
}
