package daemon

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// Run serves what the loader gives, loads again on SIGHUP and returns nil
// on SIGTERM; a loader error at start is returned unchanged.
func TestRunReloadsAndStops(t *testing.T) {
	backend := testkit.Listen(t, "127.0.0.1:0")
	cfg := loadTOML(t, "listen = \"127.0.0.1:0\"\nlog_level = \"error\"\n[[backend]]\naddress = \""+
		backend.Addr().String()+"\"\n")
	l := &fakeLoader{cfg: cfg}
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- Run(Options{Load: l.load, Signals: sigs}) }()
	sigs <- syscall.SIGHUP
	testkit.WaitFor(t, "the reload's load", func() bool { return l.loads() == 2 })
	sigs <- syscall.SIGTERM
	if err := testkit.Await(t, done, "Run did not return after SIGTERM"); err != nil {
		t.Errorf("Run after SIGTERM: %v", err)
	}

	bad := errors.New("line 1: bad")
	l.set(nil, bad)
	if err := Run(Options{Load: l.load, Signals: sigs}); err != bad {
		t.Errorf("Run with a failing loader = %v, want its error", err)
	}
}
