// Package daemon runs the proxy: it starts the server, its listeners,
// the workers and the background loops (health checks, DNS) of a config;
// reloads the config on SIGHUP; hands the listeners to a new process on
// SIGUSR2; and drains on SIGTERM or SIGINT. The config comes from a
// loader, which the daemon calls at start and on every reload:
//
//	err := daemon.Run(daemon.Options{Load: load, Version: "1.2.3"})
//
// The daemon owns everything it starts and stops it all before Run
// returns.
package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/logging"
	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/server"
	"github.com/stickyd/stickyd/upgrade"
	"go.uber.org/zap"
)

// ErrConfig is wrapped by the errors of a setup that cannot work as
// configured (a command line reports them as usage errors, exit 2).
var ErrConfig = errors.New("daemon: configuration")

// configError is an error of the setup: Is(ErrConfig), and printed as its
// message alone.
type configError struct{ error }

func (e configError) Is(target error) bool { return target == ErrConfig }
func (e configError) Unwrap() error        { return e.error }

func configErrorf(format string, args ...any) error {
	return configError{fmt.Errorf(format, args...)}
}

// Options configure a daemon.
type Options struct {
	// Load reads and validates the config: at start, and again on every
	// SIGHUP. Its error at start is returned by Run unchanged; at a
	// reload it is logged and the config in force stays.
	Load func() (*config.Config, error)
	// Version is logged at start.
	Version string
	// Signals, when not nil, replaces the process's SIGTERM, SIGINT,
	// SIGHUP and SIGUSR2 (tests send them here).
	Signals <-chan os.Signal
}

// daemon is a running proxy: the server, its listeners, the workers, and
// the background loops (health checks, DNS) of the config in force.
type daemon struct {
	load    func() (*config.Config, error)
	version string
	log     *zap.Logger
	logs    *logging.Logs
	boot    *config.Config // as started: what only a restart changes
	srv     *server.Server
	epoll   *relay.EpollEngine  // the engine, for its metrics; nil with the goroutine engine
	spread  int                 // event loops accepting (spreadAccept's; 0: all, as started)
	ceiling atomic.Int64        // the adaptive GOMAXPROCS's most Ps now (spreadAccept's); 0: fixed
	trials  [2]atomic.Int64     // its trials of one P fewer: kept one fewer, brought it back (countTrial)
	sup     *backend.Supervisor // nil without [workers]
	reaping bool                // the reaper runs (startReaper)
	// stopReaper stops the reaper and waits (a no-op when none runs).
	stopReaper func()
	workers    []backend.Spec // the worker slots as first made; a slot's live address is its Backend's Addr
	ln         net.Listener
	lnGroup    []net.Listener // the rest of ln's SO_REUSEPORT group, inherited
	self       *selfAddrs     // what reaches ln; nil until it listens
	adminLn    net.Listener   // nil when admin is off
	admin      *http.Server
	budget     fdBudget  // connections and pipes under the open-file limit
	access     accessLog // the access log in force (access.go)
	notify     *notifier // systemd's notify socket (systemd.go)
	// closings is the engine's count of lingering closes (either engine).
	closings relay.ClosingCounter

	up        *upgrade.Upgrader // hands the listeners to a new process
	inherited bool              // ln came from the process before an upgrade

	// adminToken is required by the admin API's state-changing calls;
	// adminTokenEnv is it again when it came from STICKYD_ADMIN_TOKEN (an
	// upgrade passes it on).
	adminToken, adminTokenEnv string

	reloads    *requests[admin.ReloadOutcome] // reloads asked for (SIGHUP, POST /reload); they coalesce
	rolls      *requests[admin.RollOutcome]   // rolling restarts of the workers asked for (SIGUSR1, admin API)
	firstReady chan struct{}                  // closed once a worker is ready
	allReady   chan struct{}                  // closed once every worker slot has been ready
	handoff    bool                           // started by an upgrade of a stickyd with workers: they start beside the old ones
	// startFailed gets the slots whose first worker did not start (an
	// upgrade's new process gives up on the first).
	startFailed chan int

	mu       sync.Mutex
	cfg      *config.Config      // the config in force; guarded by mu
	dns      map[string][]string // dns backend answers in force; guarded by mu
	loops    *loops              // of cfg; guarded by mu
	stopping bool                // shutdown began: a reload in flight is dropped; guarded by mu
}

// Run runs the proxy until SIGTERM or SIGINT. SIGHUP reloads the config;
// SIGUSR2 hands the listening sockets to a new copy of the binary and
// drains (upgrade.go).
func Run(o Options) error {
	cfg, err := o.Load()
	if err != nil {
		return err
	}
	log, logs := newLogger(cfg)
	stopReport := logs.Report(log)
	// At exit, wait a bounded time for the log output: it may be blocked for good.
	defer func() { stopReport(); logs.Close(2 * time.Second) }()
	// Signals are caught from here on: one that arrives during start (after
	// "stickyd listening" is logged, say) is acted on once run begins.
	sigs := o.Signals
	if sigs == nil {
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
		defer signal.Stop(ch)
		sigs = ch
	}
	d := &daemon{load: o.Load, version: o.Version, log: log, logs: logs, boot: cfg, cfg: cfg, rolls: newRollRequests(), reloads: newReloadRequests(),
		stopReaper: func() {}}
	defer func() { d.stopReaper() }()
	if d.up, err = newUpgrader(d); err != nil {
		return err
	}
	defer d.up.Close()
	d.notify = newNotifier(log, d.up.Child())
	defer d.notify.close()
	if err := d.start(); err != nil {
		return err
	}
	return d.run(sigs)
}
