package daemon

import (
	"os"
	"strconv"
	"testing"
	"time"

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
	none.keepAlive()
	none.close()
}
