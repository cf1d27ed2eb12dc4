package daemon

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// notifier tells systemd what the daemon does, under a unit of Type=notify
// ($NOTIFY_SOCKET): ready (with its pid, which after a SIGUSR2 upgrade is
// the new process's: the unit needs NotifyAccess=all), reloading, stopping,
// and the watchdog's keep-alive ($WATCHDOG_USEC). Without $NOTIFY_SOCKET it
// does nothing. The workers never see these variables (backend.baseEnv).
type notifier struct {
	log      *zap.Logger
	on       bool
	failed   sync.Once // the first failure is logged, not every one
	watchdog time.Duration
	stop     chan struct{}
}

// newNotifier reads the environment. child: this process was started by a
// SIGUSR2 upgrade, so $WATCHDOG_PID names the old process, whose place it
// takes.
func newNotifier(log *zap.Logger, child bool) *notifier {
	n := &notifier{log: log.Named("systemd"), on: os.Getenv("NOTIFY_SOCKET") != "", stop: make(chan struct{})}
	if !n.on {
		return n
	}
	if usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64); err == nil && usec > 0 {
		pid := os.Getenv("WATCHDOG_PID")
		if pid == "" || pid == strconv.Itoa(os.Getpid()) || child {
			n.watchdog = time.Duration(usec) * time.Microsecond
		}
	}
	n.log.Info("systemd notify socket found: readiness, reloads and stops are reported",
		zap.String("notify_socket", os.Getenv("NOTIFY_SOCKET")), zap.Duration("watchdog", n.watchdog))
	return n
}

// send sends the state lines, logging the first failure.
func (n *notifier) send(lines ...string) {
	if n == nil || !n.on {
		return
	}
	if _, err := sd.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		n.failed.Do(func() {
			n.log.Warn("systemd notify failed: systemd may not see this process as started, reloaded or alive",
				zap.Error(err), zap.String("fix", "check NOTIFY_SOCKET; after a SIGUSR2 upgrade the unit needs NotifyAccess=all"))
		})
	}
}

// ready says the daemon serves (at start, after a reload, or as the new
// process of an upgrade: MAINPID moves to it), and starts the watchdog's
// keep-alive once.
func (n *notifier) ready(status string) {
	n.send(sd.SdNotifyReady, "MAINPID="+strconv.Itoa(os.Getpid()), "STATUS="+status)
}

// reloading says a reload (SIGHUP) has begun; ready follows.
func (n *notifier) reloading() {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	n.send(sd.SdNotifyReloading, "MONOTONIC_USEC="+strconv.FormatInt(ts.Nano()/1000, 10), "STATUS=reloading the config")
}

// stopping says the daemon drains and stops (SIGTERM). Not sent by the old
// process of an upgrade: the service goes on, in the new one.
func (n *notifier) stopping() {
	n.send(sd.SdNotifyStopping, "STATUS=draining and stopping")
}

// keepAlive sends WATCHDOG=1 every half watchdog interval until close,
// each time check (the event loops' liveness; nil: none) passes within a
// quarter of the interval. While it fails, the watchdog goes unfed, so
// that systemd restarts a stickyd whose loops are stuck; that is logged
// once, and once more when they answer again.
func (n *notifier) keepAlive(check func(context.Context) error) {
	if n == nil || !n.on || n.watchdog <= 0 {
		return
	}
	go func() {
		t := time.NewTicker(n.watchdog / 2)
		defer t.Stop()
		failing := false
		for {
			select {
			case <-t.C:
			case <-n.stop:
				return
			}
			var err error
			if check != nil {
				ctx, cancel := context.WithTimeout(context.Background(), n.watchdog/4)
				err = check(ctx)
				cancel()
			}
			switch {
			case err == nil:
				n.send(sd.SdNotifyWatchdog)
				if failing {
					n.log.Info("the event loops answer again: the systemd watchdog is fed")
				}
			case !failing:
				n.log.Error("the systemd watchdog is not fed: an event loop is not answering; systemd restarts stickyd after WatchdogSec",
					zap.Error(err), zap.Duration("watchdog", n.watchdog))
			}
			failing = err != nil
		}
	}()
}

// close stops the keep-alive.
func (n *notifier) close() {
	if n != nil {
		close(n.stop)
	}
}
