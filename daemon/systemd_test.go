package daemon

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/relay"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The watchdog is fed by the process systemd names in $WATCHDOG_PID, or by
// the new process of an upgrade (its child, which takes its place); not by
// any other process that inherited the variables.
func TestNotifierWatchdogPID(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
	t.Setenv("WATCHDOG_USEC", "3000000")
	for _, tc := range []struct {
		pid   string
		child bool
		want  time.Duration
	}{
		{"", false, 3 * time.Second},
		{strconv.Itoa(os.Getpid()), false, 3 * time.Second},
		{"1", false, 0},
		{"1", true, 3 * time.Second},
	} {
		t.Setenv("WATCHDOG_PID", tc.pid)
		if n := newNotifier(zap.NewNop(), tc.child); n.watchdog != tc.want || !n.on {
			t.Errorf("WATCHDOG_PID %q, child %v: watchdog %v (on %v), want %v", tc.pid, tc.child, n.watchdog, n.on, tc.want)
		}
	}
	// A socket that is not there: one warning, with the fix, however many
	// notifications fail.
	core, logs := observer.New(zap.InfoLevel)
	n := newNotifier(zap.New(core), false)
	n.ready("serving")
	n.reloading()
	n.stopping()
	if w := logs.FilterMessageSnippet("systemd notify failed").All(); len(w) != 1 || w[0].ContextMap()["fix"] == nil {
		t.Errorf("failed notifications logged as %v", w)
	}
	os.Unsetenv("NOTIFY_SOCKET")
	if n := newNotifier(zap.NewNop(), false); n.on || n.watchdog != 0 {
		t.Errorf("without NOTIFY_SOCKET: on %v, watchdog %v", n.on, n.watchdog)
	}
	var none *notifier // a daemon made without Run (tests) has none
	none.ready("x")
	none.keepAlive(nil)
	none.close()
}

// The watchdog is fed only while the liveness check passes: a failing
// check starves it (logged once), and feeding resumes (logged) once the
// check passes again.
func TestKeepAliveFollowsTheCheck(t *testing.T) {
	ns := testkit.ListenNotify(t)
	t.Setenv("NOTIFY_SOCKET", ns.Path)
	t.Setenv("WATCHDOG_USEC", "40000") // a check every 20 ms
	t.Setenv("WATCHDOG_PID", "")
	core, logs := observer.New(zap.InfoLevel)
	n := newNotifier(zap.New(core), false)
	defer n.close()
	var stuck atomic.Bool
	checks := make(chan struct{}, 1000)
	n.keepAlive(func(context.Context) error {
		checks <- struct{}{}
		if stuck.Load() {
			return relay.ErrLoopStuck
		}
		return nil
	})
	feeds, done := make(chan struct{}, 1000), make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case m := <-ns.Msgs:
				if m["WATCHDOG"] == "1" {
					feeds <- struct{}{}
				}
			case <-done:
				return
			}
		}
	}()
	testkit.Await(t, feeds, "the watchdog not fed while the check passes")
	stuck.Store(true)
	for range 3 { // let a check or two fail, then drop what was fed before
		testkit.Await(t, checks, "no check")
	}
	for len(feeds) > 0 {
		<-feeds
	}
	for range 5 {
		testkit.Await(t, checks, "no check")
	}
	if len(feeds) != 0 {
		t.Errorf("fed %d times while the check failed", len(feeds))
	}
	stuck.Store(false)
	testkit.Await(t, feeds, "the watchdog not fed again once the check passed")
	testkit.WaitFor(t, "the recovery logged", func() bool { return logs.FilterMessageSnippet("answer again").Len() == 1 })
	if n := logs.FilterMessageSnippet("watchdog is not fed").Len(); n != 1 {
		t.Errorf("%d lines for the failing checks, want 1", n)
	}
}
