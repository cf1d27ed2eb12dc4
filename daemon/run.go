package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/stickyd/stickyd/server"
	"go.uber.org/zap"
)

// run serves until a stop signal on sigs or a completed upgrade, then
// drains and stops the workers.
func (d *daemon) run(sigs <-chan os.Signal) error {
	if d.srv == nil {
		return nil // stopped during start
	}
	stopWorkers := d.runWorkers()
	if d.handoff { // an upgrade's new process: its workers first
		if err := d.awaitHandoff(sigs); err != nil {
			d.log.Error("upgrade failed in the new process", zap.Error(err))
			d.rolls.close()
			d.stopAdmin()
			d.stopLoops()
			d.stopAccess()
			stopWorkers()
			return err
		}
	}
	serveErr := make(chan error, 1)
	stopWaiting := make(chan struct{})
	go func() {
		d.awaitWorkers(stopWaiting)
		d.notify.ready(d.status())
		d.notify.keepAlive(d.loopsAnswer())
		serveErr <- d.srv.Serve(d.ln, d.lnGroup...)
	}()
	pid := writePIDFile(d.boot.PIDFile, d.log)
	if err := d.up.Ready(); err != nil {
		d.log.Warn("upgrade: could not tell the old process we are ready", zap.Error(err))
	}

	reloadCtx, stopReloads := context.WithCancel(context.Background())
	go d.reloader(reloadCtx) // a reload in flight at the stop finishes on its own; install checks d.stopping
	rollCtx, stopRolls := context.WithCancel(context.Background())
	rolled := make(chan struct{})
	go func() { defer close(rolled); d.roller(rollCtx) }()
	err := d.signals(sigs, serveErr)
	close(stopWaiting)
	stopReloads()
	stopRolls() // a rolling restart under way stops here: each slot keeps a worker
	<-rolled
	d.drain()
	d.stopAdmin()
	d.stopLoops()
	d.stopAccess() // every connection has had its line
	stopWorkers()
	removePIDFile(d.boot.PIDFile, pid)
	d.log.Info("stopped")
	if err != nil && !errors.Is(err, server.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// runWorkers runs the supervisor of [workers], if any, and returns the
// function that stops it and waits.
func (d *daemon) runWorkers() (stop func()) {
	if d.sup == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.sup.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			d.log.Error("workers", zap.Error(err))
		}
	}
}

// drain stops accepting and waits for the open connections, at most
// drain_timeout (of the config in force).
func (d *daemon) drain() {
	d.mu.Lock()
	drain := d.cfg.Drain()
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := d.srv.Shutdown(ctx); err != nil {
		d.log.Warn("drain cut short", zap.Error(err))
	}
}

// signals handles SIGHUP (reload), SIGUSR1 (rolling restart of the
// workers) and SIGUSR2 (upgrade) until SIGTERM or
// SIGINT, a completed upgrade, or a failed accept loop (returned).
func (d *daemon) signals(sigs <-chan os.Signal, serveErr <-chan error) error {
	var upgrading chan error // non-nil while an upgrade runs
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				d.requestReload()
			case syscall.SIGUSR1:
				d.requestRoll()
			case syscall.SIGUSR2:
				if why := endsContainer(); why != "" {
					d.log.Warn("SIGUSR2 ignored: the old process's exit would end the container, and the new process with it",
						zap.String("reason", why), zap.String("fix", "to apply a new config send SIGHUP; to deploy a new version of the workers' app send SIGUSR1; to upgrade stickyd itself, replace the container (a rolling update of the replicas behind the load balancer)"))
					continue
				}
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
				d.notify.stopping()
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

// loopsAnswer is the watchdog's liveness check: the epoll engine's loops
// all run (EpollEngine.Ping); nil with the goroutine engine.
func (d *daemon) loopsAnswer() func(context.Context) error {
	if d.epoll == nil {
		return nil
	}
	return d.epoll.Ping
}

// status is the one-line state systemd shows (systemctl status).
func (d *daemon) status() string {
	return fmt.Sprintf("serving on %s: %d backends", d.ln.Addr(), len(d.srv.Backends().Backends()))
}

func (d *daemon) stopAdmin() {
	if d.admin == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d.admin.Shutdown(ctx)
}
