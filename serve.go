package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/balancer"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/server"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// serve is the default action: run the proxy until SIGTERM or SIGINT.
func serve(c *cli.Context) error {
	cfg, err := loadConfig(c, c.Args().Slice())
	if err != nil {
		return err
	}
	log, err := newLogger(cfg)
	if err != nil {
		return usageError("log: %v", err)
	}
	defer log.Sync()

	var srv *server.Server // set below, before any worker can report
	specs, sup, err := backendSpecs(cfg, log, func() *backend.Set { return srv.Backends() })
	if err != nil {
		return usageError("%v", err)
	}
	set, err := newSet(cfg, specs, log)
	if err != nil {
		return usageError("%v", err)
	}
	engine, err := newEngine(cfg)
	if err != nil {
		return fmt.Errorf("start engine: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr())
	if err != nil {
		engine.Close()
		return fmt.Errorf("listen %s: %w", cfg.ListenAddr(), err)
	}
	srv = server.New(serverOptions(cfg), set, engine, log.Named("server"))
	log.Info("stickyd listening", zap.String("listen", ln.Addr().String()),
		zap.Int("backends", len(specs)), zap.String("send_proxy", sendProxyName(cfg)),
		zap.Strings("accept_proxy", cfg.AcceptProxy), zap.String("version", buildVersion()))
	return run(cfg, log, srv, ln, sup)
}

// run serves until a stop signal, then drains and stops the workers.
func run(cfg *config.Config, log *zap.Logger, srv *server.Server, ln net.Listener, sup *backend.Supervisor) error {
	workersCtx, stopWorkers := context.WithCancel(context.Background())
	workersDone := make(chan error, 1)
	if sup != nil {
		go func() { workersDone <- sup.Run(workersCtx) }()
	} else {
		workersDone <- nil
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	var err error
	select {
	case sig := <-sigs:
		log.Info("stopping", zap.Stringer("signal", sig), zap.Duration("drain_timeout", cfg.Drain()))
	case err = <-serveErr:
		log.Error("accept loop failed", zap.Error(err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Drain())
	defer cancel()
	if derr := srv.Shutdown(ctx); derr != nil {
		log.Warn("drain cut short", zap.Error(derr))
	}
	stopWorkers()
	if werr := <-workersDone; werr != nil && !errors.Is(werr, context.Canceled) {
		log.Error("workers", zap.Error(werr))
	}
	log.Info("stopped")
	if err != nil && !errors.Is(err, server.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

func serverOptions(cfg *config.Config) server.Options {
	return server.Options{
		Trusted:             cfg.Trusted(),
		HeaderTimeout:       cfg.HeaderTimeout(),
		SendProxy:           cfg.ProxyVersion(),
		ForwardTLVs:         cfg.ForwardTLVs,
		ClientIPHeader:      cfg.ClientIPHeader,
		IgnoreMissingHeader: cfg.IgnoreMissingHeader,
		Idle:                cfg.Idle(),
		MaxConnections:      maxConnections(cfg),
	}
}

func sendProxyName(cfg *config.Config) string {
	if cfg.SendProxy == "" {
		return "v2"
	}
	return cfg.SendProxy
}

// maxConnections is max_connections, or by default what the open-file
// limit allows: each proxied connection costs fdsPerConn descriptors.
func maxConnections(cfg *config.Config) int {
	if cfg.MaxConnections > 0 {
		return cfg.MaxConnections
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<24 {
		return 0
	}
	perConn := 6 // goroutine engine: two sockets and two splice pipes
	if engineName(cfg) == "epoll" {
		perConn = 2
	}
	return max(1, (int(lim.Cur)-128)/perConn)
}

// newSet builds the backend set from specs.
func newSet(cfg *config.Config, specs []backend.Spec, log *zap.Logger) (*backend.Set, error) {
	key, err := balancer.ParseKeyMode(cfg.HashKey)
	if err != nil {
		return nil, fmt.Errorf("hash_key: %w", err)
	}
	return backend.NewSet(specs, backend.Options{
		DialTimeout:   cfg.DialTimeout(),
		BalanceFactor: cfg.BalanceFactor,
		Balancer:      balancer.Options{Key: key},
	}, log.Named("backend"))
}

// backendSpecs lists the static backends and, with [workers], the worker
// slots (out of rotation until ready) and their supervisor.
// current returns the backend set in force when a worker changes state.
func backendSpecs(cfg *config.Config, log *zap.Logger, current func() *backend.Set) ([]backend.Spec, *backend.Supervisor, error) {
	var specs []backend.Spec
	for _, b := range cfg.Backends {
		specs = append(specs, backend.Spec{Name: b.BackendName(), Address: b.Address, Weight: b.BackendWeight()})
	}
	if cfg.Workers == nil {
		return specs, nil, nil
	}
	var sup *backend.Supervisor
	sup, err := backend.NewSupervisor(workerConfig(cfg.Workers), log.Named("worker"), func(slot int, ready bool) {
		if b := current().ByName(sup.Slots()[slot].Name); b != nil {
			b.SetReady(ready)
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("workers: %w", err)
	}
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

func engineName(cfg *config.Config) string {
	if cfg.Engine == "" {
		return "epoll"
	}
	return cfg.Engine
}

func newEngine(cfg *config.Config) (relay.Engine, error) {
	if engineName(cfg) == "goroutine" {
		return relay.NewGoroutineEngine(), nil
	}
	return relay.NewEpollEngine(relay.EpollOptions{})
}
