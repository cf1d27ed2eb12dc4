package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/balancer"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/logging"
	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/server"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

// daemon is a running proxy: the server, its listeners, the workers, and
// the background loops (health checks, DNS) of the config in force.
type daemon struct {
	c       *cli.Context
	argv    []string // worker command after --
	log     *zap.Logger
	logs    *logging.Logs
	boot    *config.Config // as started: what only a restart changes
	srv     *server.Server
	sup     *backend.Supervisor // nil without [workers]
	workers []backend.Spec      // the worker slots, fixed for the process's life
	ln      net.Listener
	self    *selfAddrs   // what reaches ln; nil until it listens
	adminLn net.Listener // nil when admin is off
	admin   *http.Server
	budget  fdBudget // connections and pipes under the open-file limit

	// adminToken is required by the admin API's state-changing calls;
	// adminTokenEnv is it again when it came from STICKYD_ADMIN_TOKEN (an
	// upgrade passes it on).
	adminToken, adminTokenEnv string

	reloads    chan struct{} // a pending SIGHUP; buffered 1, so reloads coalesce
	firstReady chan struct{} // closed once a worker is ready

	mu       sync.Mutex
	cfg      *config.Config      // the config in force; guarded by mu
	dns      map[string][]string // dns backend answers in force; guarded by mu
	loops    *loops              // of cfg; guarded by mu
	stopping bool                // shutdown began: a reload in flight is dropped; guarded by mu
}

// serve is the default action: run the proxy until SIGTERM or SIGINT.
// SIGHUP reloads the config file; SIGUSR2 hands the listening socket to a
// new copy of the binary and drains (upgrade.go).
func serve(c *cli.Context) error {
	argv := c.Args().Slice()
	cfg, err := loadConfig(c, argv)
	if err != nil {
		return err
	}
	log, logs, err := newLogger(cfg)
	if err != nil {
		return usageError("log: %v", err)
	}
	stopReport := logs.Report(log)
	// At exit, wait a bounded time for the log output: it may be blocked for good.
	defer func() { stopReport(); logs.Close(2 * time.Second) }()
	// Signals are caught from here on: one that arrives during start (after
	// "stickyd listening" is logged, say) is acted on once run begins.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	inh, err := takeInherited()
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	d := &daemon{c: c, argv: argv, log: log, logs: logs, boot: cfg, cfg: cfg}
	if err := d.start(inh); err != nil {
		inh.close()
		return err
	}
	return d.run(inh, sigs)
}

// start builds the backend set, the server and the listeners.
func (d *daemon) start(inh *inherited) error {
	cfg := d.cfg
	if err := d.prepareWorkers(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	d.dns = d.firstDNS(ctx, cfg)
	stopped := ctx.Err() != nil
	stop()
	if stopped {
		return nil // stopped while waiting for DNS; run returns at once
	}
	d.budget = newFDBudget(cfg, d.log)
	token, fromEnv, err := adminToken(cfg)
	if err != nil {
		return usageError("%v", err)
	}
	if d.adminToken = token; fromEnv {
		d.adminTokenEnv = token
	}
	engine, err := newEngine(cfg, d.budget)
	if err != nil {
		return fmt.Errorf("start engine: %w", err)
	}
	if err := d.listen(inh, cfg); err != nil {
		engine.Close()
		return err
	}
	set, err := d.buildSet(cfg, d.dns, nil) // refuses a backend that is the listener
	if err != nil {
		engine.Close()
		d.ln.Close()
		if d.adminLn != nil {
			d.adminLn.Close()
		}
		return usageError("%v", err)
	}
	d.srv = server.New(serverOptions(cfg, d.budget), set, engine, d.log.Named("server"))
	d.loops = d.startLoops(cfg)
	go adaptProcs(context.Background(), d.log) // for the process's life
	d.startAdmin()
	warnRiskySetup(cfg, d.log)
	d.log.Info("stickyd listening", zap.String("listen", d.ln.Addr().String()),
		zap.Int("backends", len(set.Backends())), zap.String("send_proxy", cfg.SendProxyName()),
		zap.Strings("accept_proxy", cfg.AcceptProxy), zap.Bool("inherited", inh != nil),
		zap.String("version", buildVersion()))
	return nil
}

// prepareWorkers makes the supervisor of [workers] and its slots, which
// settles their ports (a port held by another program: exit 1).
func (d *daemon) prepareWorkers() error {
	d.firstReady = make(chan struct{})
	var once sync.Once
	var err error
	d.workers, d.sup, err = workerSpecs(d.cfg, d.log, func() *backend.Set { return d.srv.Backends() },
		func() { once.Do(func() { close(d.firstReady) }) })
	if errors.Is(err, backend.ErrWorkerPortInUse) {
		return fmt.Errorf("%w (stop that program, choose another --port-base, or leave it unset for free ports)", err)
	}
	if err != nil {
		return usageError("%v", err)
	}
	d.logWorkerAddresses()
	return nil
}

// listen opens (or inherits) the proxy and admin listeners.
func (d *daemon) listen(inh *inherited, cfg *config.Config) error {
	var err error
	if d.ln, err = inh.listener(cfg.ListenAddr()); err != nil {
		return fmt.Errorf("listen %s: %w", cfg.ListenAddr(), err)
	}
	d.self = newSelfAddrs(d.ln.Addr())
	if d.adminLn, err = inh.adminListener(cfg.Admin, cfg.AdminSocketPerm()); err != nil {
		d.ln.Close()
		return fmt.Errorf("admin listen %s: %w", cfg.Admin, err)
	}
	return nil
}

// awaitWorkers holds the accept loop back at start while the launched
// workers are the only backends and none is ready yet: a client that comes
// early waits in the listen backlog instead of being refused. It gives up
// after the workers' startup timeout (clients are then refused until a
// worker is ready) or when stop is closed.
func (d *daemon) awaitWorkers(stop <-chan struct{}) {
	if d.sup == nil || d.srv.Backends().Lookup(netip.IPv4Unspecified()) != nil {
		return
	}
	timeout := d.boot.Workers.StartupTimeout.Duration
	if timeout == 0 {
		timeout = backend.DefaultWorkerStartupTimeout
	}
	d.log.Info("no worker ready yet: clients wait until one is", zap.Duration("startup_timeout", timeout))
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-d.firstReady:
		d.log.Info("a worker is ready: accepting")
	case <-t.C:
		d.log.Warn("no worker ready within startup_timeout; accepting anyway, clients are refused until one is",
			zap.Duration("startup_timeout", timeout))
	case <-stop:
	}
}

// logWorkerAddresses logs where the workers are told to listen (chosen at
// start when port_base is unset).
func (d *daemon) logWorkerAddresses() {
	if d.sup == nil {
		return
	}
	var addrs []string
	for _, s := range d.sup.Slots() {
		addrs = append(addrs, s.Address)
	}
	d.log.Info("worker addresses", zap.Strings("addresses", addrs))
}

// startAdmin serves the admin API when admin is set.
func (d *daemon) startAdmin() {
	if d.adminLn == nil {
		return
	}
	h := admin.NewHandler(admin.Source{Backends: d.srv.Backends, Metrics: d.srv.Metrics(), Open: d.srv.Open,
		MaxConnections: d.budget.conns, Workers: d.sup,
		Logs: d.logs.Counts}, d.log.Named("admin"))
	h = admin.Protect(h, adminAccess(d.adminLn, d.adminToken), d.log.Named("admin"))
	d.admin = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute,
		MaxHeaderBytes: 16 << 10, ErrorLog: zap.NewStdLog(d.log.Named("admin"))}
	go d.admin.Serve(d.adminLn)
	d.log.Info("admin listening", zap.String("admin", d.adminLn.Addr().String()),
		zap.Bool("token", d.adminToken != ""), zap.Bool("host_check", adminOnLoopback(d.adminLn)))
	warnAdminExposure(d.adminLn, d.adminToken, d.log.Named("admin"))
}

// run serves until a stop signal on sigs or a completed upgrade, then
// drains and stops the workers.
func (d *daemon) run(inh *inherited, sigs <-chan os.Signal) error {
	if d.srv == nil {
		return nil // stopped during start
	}
	workersCtx, stopWorkers := context.WithCancel(context.Background())
	workersDone := make(chan error, 1)
	if d.sup != nil {
		go func() { workersDone <- d.sup.Run(workersCtx) }()
	} else {
		workersDone <- nil
	}
	serveErr := make(chan error, 1)
	stopWaiting := make(chan struct{})
	go func() {
		d.awaitWorkers(stopWaiting)
		serveErr <- d.srv.Serve(d.ln)
	}()
	pid := writePIDFile(d.boot.PIDFile, d.log)
	inh.signalReady(d.log)

	d.reloads = make(chan struct{}, 1)
	go d.reloader()
	err := d.signals(sigs, serveErr)
	close(stopWaiting)
	close(d.reloads)
	d.mu.Lock()
	drain := d.cfg.Drain()
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if derr := d.srv.Shutdown(ctx); derr != nil {
		d.log.Warn("drain cut short", zap.Error(derr))
	}
	d.stopAdmin()
	d.stopLoops()
	stopWorkers()
	if werr := <-workersDone; werr != nil && !errors.Is(werr, context.Canceled) {
		d.log.Error("workers", zap.Error(werr))
	}
	removePIDFile(d.boot.PIDFile, pid)
	d.log.Info("stopped")
	if err != nil && !errors.Is(err, server.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// signals handles SIGHUP (reload) and SIGUSR2 (upgrade) until SIGTERM or
// SIGINT, a completed upgrade, or a failed accept loop (returned).
func (d *daemon) signals(sigs <-chan os.Signal, serveErr <-chan error) error {
	var upgrading chan error // non-nil while an upgrade runs
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				d.requestReload()
			case syscall.SIGUSR2:
				if upgrading != nil {
					d.log.Warn("upgrade already in progress; SIGUSR2 ignored")
					continue
				}
				upgrading = make(chan error, 1)
				go func() { upgrading <- d.upgrade() }()
			default:
				d.mu.Lock()
				drain := d.cfg.Drain()
				d.mu.Unlock()
				d.log.Info("stopping", zap.Stringer("signal", sig), zap.Duration("drain_timeout", drain))
				return nil
			}
		case err := <-upgrading:
			upgrading = nil
			if err != nil {
				d.log.Error("upgrade failed; this process keeps serving", zap.Error(err))
				continue
			}
			d.log.Info("upgrade: the new process serves; draining this one")
			return nil
		case err := <-serveErr:
			d.log.Error("accept loop failed", zap.Error(err))
			return err
		}
	}
}

func (d *daemon) stopAdmin() {
	if d.admin == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d.admin.Shutdown(ctx)
}

func serverOptions(cfg *config.Config, budget fdBudget) server.Options {
	return server.Options{
		Trusted:             cfg.Trusted(),
		HeaderTimeout:       cfg.HeaderTimeout(),
		SendProxy:           cfg.ProxyVersion(),
		ForwardTLVs:         cfg.ForwardTLVs,
		ClientIPHeader:      cfg.ClientIPHeader,
		IgnoreMissingHeader: cfg.IgnoreMissingHeader,
		Idle:                cfg.Idle(),
		FirstByte:           cfg.FirstByteTimeout.Duration,
		MaxConnections:      budget.conns,
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
// ready) and their supervisor, or nothing without [workers].
// onReady is called each time a worker becomes ready.
func workerSpecs(cfg *config.Config, log *zap.Logger, current func() *backend.Set, onReady func()) ([]backend.Spec, *backend.Supervisor, error) {
	if cfg.Workers == nil {
		return nil, nil, nil
	}
	var sup *backend.Supervisor
	sup, err := backend.NewSupervisor(workerConfig(cfg.Workers), log.Named("worker"), func(slot int, ready bool) {
		if b := current().ByName(sup.Slots()[slot].Name); b != nil {
			b.SetReady(ready)
		}
		if ready {
			onReady()
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("workers: %w", err)
	}
	var specs []backend.Spec
	for _, w := range sup.Slots() {
		specs = append(specs, backend.Spec{Name: w.Name, Address: w.Address, Weight: 1, NotReady: true})
	}
	return specs, sup, nil
}

// workerConfig maps [workers] to the supervisor's config. A command named
// "stickyd" runs this very binary (the hello worker demo).
func workerConfig(w *config.Workers) backend.WorkerConfig {
	argv := append([]string(nil), w.Command...)
	if len(argv) > 0 && argv[0] == "stickyd" {
		if self, err := os.Executable(); err == nil {
			argv[0] = self
		}
	}
	return backend.WorkerConfig{
		Command: argv, Count: w.WorkerCount(), PortBase: w.PortBase, SocketDir: w.SocketDir,
		Env: w.Env, Dir: w.Dir, StartupTimeout: w.StartupTimeout.Duration, StopTimeout: w.StopTimeout.Duration,
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
