package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/internal/reaper"
	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/server"
	"go.uber.org/zap"
)

// start builds the backend set, the server and the listeners.
func (d *daemon) start() error {
	cfg := d.cfg
	if err := d.prepareWorkers(); err != nil {
		return err
	}
	if !d.up.Child() { // an upgrade's new process has taken over: it only logs
		if err := checkPIDFile(d.boot.PIDFile); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	d.dns = d.firstDNS(ctx, cfg)
	stopped := ctx.Err() != nil
	stop()
	if stopped {
		return nil // stopped while waiting for DNS; run returns at once
	}
	d.budget = newFDBudget(cfg, d.log)
	if err := d.readAdminToken(cfg); err != nil {
		return err
	}
	access, _, err := d.openAccess(cfg)
	if err != nil {
		return configErrorf("%v", err)
	}
	if err := d.newServer(cfg); err != nil {
		access.Close(0)
		return err
	}
	d.useAccess(access)
	d.reportAccess()
	d.loops = d.startLoops(cfg)
	d.reaping = d.startReaper()
	h := procsHooks{onTick: d.spreadAccept}
	if d.epoll != nil {
		h.woke, h.loops, h.onTrial = d.epoll.Woke(), d.epoll.Work, d.countTrial
	}
	go adaptProcs(context.Background(), d.log, h) // for the process's life
	d.startAdmin()
	warnRiskySetup(cfg, d.log)
	warnUnknownEnv(d.log)
	warnProcsOverLimit(d.log)
	d.log.Info("stickyd listening", zap.String("listen", d.ln.Addr().String()),
		zap.Int("backends", len(d.srv.Backends().Backends())), zap.String("send_proxy", cfg.SendProxyName()),
		zap.Strings("accept_proxy", cfg.AcceptProxy), zap.Bool("inherited", d.inherited),
		zap.String("version", d.version))
	return nil
}

// readAdminToken takes the admin token (config.AdminToken) out of the
// environment or its file.
func (d *daemon) readAdminToken(cfg *config.Config) error {
	token, fromEnv, err := adminToken(cfg)
	if err != nil {
		return configErrorf("%v", err)
	}
	if d.adminToken = token; fromEnv {
		d.adminTokenEnv = token
	}
	return nil
}

// newServer opens the engine and the listeners and makes the server with
// the backend set of cfg. On error it closes what it opened.
func (d *daemon) newServer(cfg *config.Config) error {
	engine, err := newEngine(cfg, d.budget)
	if err != nil {
		return fmt.Errorf("start engine: %w", err)
	}
	if err := d.listen(cfg); err != nil {
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
		return configErrorf("%v", err)
	}
	d.srv = server.New(serverOptions(cfg, d.budget), set, engine, d.log.Named("server"))
	d.epoll, _ = engine.(*relay.EpollEngine)
	d.closings, _ = engine.(relay.ClosingCounter)
	return nil
}

// prepareWorkers makes the supervisor of [workers] and its slots, which
// settles their ports (a port held by another program: exit 1).
func (d *daemon) prepareWorkers() error {
	d.firstReady, d.allReady = make(chan struct{}), make(chan struct{})
	handoff, err := d.workerHandoff()
	if err != nil {
		return err
	}
	d.handoff = handoff != nil
	ready := map[int]bool{} // slots ready at least once; guarded by mu
	var mu sync.Mutex
	d.workers, d.sup, err = workerSpecs(d.cfg, d.log, handoff, func() *backend.Set { return d.srv.Backends() },
		func(slot int) {
			mu.Lock()
			defer mu.Unlock()
			if ready[slot] {
				return
			}
			ready[slot] = true
			if len(ready) == 1 {
				close(d.firstReady)
			}
			if len(ready) == len(d.workers) {
				close(d.allReady)
			}
		})
	if d.sup != nil {
		d.startFailed = make(chan int, len(d.workers))
		d.sup.OnStartFailed(func(slot int) {
			select {
			case d.startFailed <- slot:
			default:
			}
		})
	}
	if errors.Is(err, backend.ErrWorkerPortInUse) {
		return fmt.Errorf("%w (stop that program, choose another --port-base, or leave it unset for free ports)", err)
	}
	if err != nil {
		return configErrorf("%v", err)
	}
	d.logWorkerAddresses()
	return nil
}

// listen opens (or inherits) the proxy and admin listeners.
func (d *daemon) listen(cfg *config.Config) error {
	var err error
	if d.ln, err = d.proxyListen(cfg.ListenAddr()); err != nil {
		return fmt.Errorf("listen %s: %w", cfg.ListenAddr(), err)
	}
	d.self = newSelfAddrs(d.ln.Addr())
	if d.adminLn, err = d.adminListen(cfg.Admin, cfg.AdminSocketPerm()); err != nil {
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
	timeout := d.startupTimeout()
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

// startupTimeout is the workers' startup_timeout, as started.
func (d *daemon) startupTimeout() time.Duration {
	if t := d.boot.Workers.StartupTimeout.Duration; t != 0 {
		return t
	}
	return backend.DefaultWorkerStartupTimeout
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
	src := admin.Source{Backends: d.srv.Backends, Metrics: d.srv.Metrics(), Open: d.srv.Open,
		MaxConnections: d.budget.conns, MaxPerClient: d.srv.MaxPerClient, MaxRatePerClient: d.srv.MaxRatePerClient, Clients: d.srv.Clients, TopClients: d.srv.TopClients, Workers: d.sup, Logs: d.logs.Counts, AccessLog: d.accessCounts, ProcsCeiling: d.ceiling.Load}
	if d.reaping {
		src.OrphansReaped = reaper.Reaped
	}
	if d.sup != nil {
		src.RollWorkers = d.rollWorkers
	}
	src.Reload = d.reloadConfig
	if ee := d.epoll; ee != nil {
		src.Moves, src.Sheds, src.Busy, src.Loops = ee.Moves, ee.Sheds, ee.Busy, ee.Loops()
		if adaptive() {
			src.ProcsTrials = func() (int64, int64) { return d.trials[0].Load(), d.trials[1].Load() }
		}
	}
	if d.closings != nil {
		src.Closings = d.closings.Closings
	}
	h := admin.NewHandler(src, d.log.Named("admin"))
	h = admin.Protect(h, adminAccess(d.adminLn, d.adminToken), d.log.Named("admin"))
	d.admin = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute,
		MaxHeaderBytes: 16 << 10, ErrorLog: zap.NewStdLog(d.log.Named("admin"))}
	go d.admin.Serve(d.adminLn)
	d.log.Info("admin listening", zap.String("admin", d.adminLn.Addr().String()),
		zap.Bool("token", d.adminToken != ""), zap.Bool("host_check", adminOnLoopback(d.adminLn)))
	warnAdminExposure(d.adminLn, d.adminToken, d.log.Named("admin"))
}

// countTrial counts a trial of the adaptive GOMAXPROCS
// (stickyd_gomaxprocs_trials_total).
func (d *daemon) countTrial(dropped bool) {
	if dropped {
		d.trials[0].Add(1)
	} else {
		d.trials[1].Add(1)
	}
}

// spreadAccept tells the server how many event loops accept (spreadFor),
// when that changes. Called by adaptProcs only.
func (d *daemon) spreadAccept(p, max int) {
	d.ceiling.Store(int64(max))
	if n := spreadFor(p, max, d.srv.Open()); n != d.spread {
		d.spread = n
		d.srv.SpreadAccept(n)
	}
}
