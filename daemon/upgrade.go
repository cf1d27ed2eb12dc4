package daemon

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/upgrade"
	"go.uber.org/zap"
)

// Zero-downtime upgrade (SIGUSR2): the upgrader (package upgrade) starts a
// new copy of the binary with the proxy's and the admin API's listening
// sockets. Once the new process is ready, this one stops accepting,
// drains its connections (drain_timeout) and exits 0.
//
// With [workers], this process also tells the new one where its workers
// listen (envUpgradeWorkers, backend.Handoff). The new process starts its
// own workers on each slot's other address, as a rolling restart would,
// and reports ready only once every slot's worker is ready; until then
// this process accepts every client. Its workers serve its connections
// until it has drained, then it stops them. A new worker that fails to
// start makes the new process exit: this one, with its workers, serves on.

// listenerNames are the sockets an upgrade hands over.
const (
	proxyListener = "listen"
	adminListener = "admin"
)

// envUpgradeWorkers carries backend.Handoff from an old process to the
// new one.
const envUpgradeWorkers = "STICKYD_UPGRADE_WORKERS"

// newUpgrader adopts what a parent passed, if this process was started by
// an upgrade.
func newUpgrader(d *daemon) (*upgrade.Upgrader, error) {
	return upgrade.New(upgrade.Options{Names: []string{proxyListener, adminListener}, Log: d.log})
}

// upgrade starts the new process and returns nil once it serves. On error
// the new process has been killed and this one is unchanged.
func (d *daemon) upgrade() (err error) {
	var env []string
	if d.adminTokenEnv != "" { // taken out of this process's environment at start
		env = append(env, envAdminToken+"="+d.adminTokenEnv)
	}
	if d.sup != nil {
		h, release, herr := d.sup.Handoff()
		if herr != nil {
			return herr
		}
		env = append(env, envUpgradeWorkers+"="+h.String())
		defer func() {
			if err != nil {
				release() // serving on: rolling restarts may run again
			}
		}()
	}
	var group []net.Listener // the loops' sockets of d.ln's SO_REUSEPORT group
	for _, ln := range d.srv.Listeners() {
		if ln != d.ln {
			group = append(group, ln)
		}
	}
	return d.up.Upgrade([]upgrade.Listener{{Name: proxyListener, Listener: d.ln, Group: group},
		{Name: adminListener, Listener: d.adminLn}}, env)
}

// workerHandoff takes the old process's backend.Handoff out of the
// environment: nil when this process was not started by an upgrade of a
// stickyd with workers.
func (d *daemon) workerHandoff() (*backend.Handoff, error) {
	v, ok := os.LookupEnv(envUpgradeWorkers)
	os.Unsetenv(envUpgradeWorkers) // the workers must not see it
	switch {
	case !ok || !d.up.Child():
		return nil, nil
	case d.cfg.Workers == nil:
		d.log.Warn("upgrade: the process before this one launched workers, and this config has no [workers]; its workers stop with it")
		return nil, nil
	}
	h, err := backend.ParseHandoff(v)
	if err != nil {
		return nil, err
	}
	return &h, nil
}

// awaitHandoff, in the new process of an upgrade with workers, waits until
// every worker slot's new worker is ready: nil then. A worker that fails
// to start, startup_timeout passing, or SIGTERM or SIGINT, give an error:
// this process then exits, and the old one goes on serving.
func (d *daemon) awaitHandoff(sigs <-chan os.Signal) error {
	timeout := d.startupTimeout()
	d.log.Info("upgrade: starting the workers beside the old process's", zap.Int("workers", len(d.workers)))
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case <-d.allReady:
			d.log.Info("upgrade: every worker is ready; taking over")
			return nil
		case slot := <-d.startFailed:
			return fmt.Errorf("upgrade: worker-%d did not start (its lines above say why); the process before this one keeps serving with its workers", slot)
		case <-t.C:
			return fmt.Errorf("upgrade: the workers were not all ready within startup_timeout (%v); the process before this one keeps serving with its workers", timeout)
		case sig := <-sigs:
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				return fmt.Errorf("upgrade: stopped by %v before the workers were ready", sig)
			}
		}
	}
}

// proxyListen returns the inherited listening socket, or a new one on addr.
func (d *daemon) proxyListen(addr string) (net.Listener, error) {
	if ln := d.up.Inherited(proxyListener); ln != nil {
		d.inherited = true
		d.lnGroup = d.up.InheritedGroup(proxyListener)
		return ln, nil
	}
	return relay.ListenTCP(addr)
}

// adminListen returns the inherited admin socket or a new one on addr
// (listenAdmin; perm for a Unix socket); nil when addr is "" (an
// inherited one is closed).
func (d *daemon) adminListen(addr string, perm os.FileMode) (net.Listener, error) {
	if ln := d.up.Inherited(adminListener); ln != nil {
		if addr == "" {
			ln.Close()
			return nil, nil
		}
		return ln, nil
	}
	if addr == "" {
		return nil, nil
	}
	return listenAdmin(addr, perm)
}
