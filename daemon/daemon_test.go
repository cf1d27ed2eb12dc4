package daemon

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// guard bounds every wait of these tests.
const guard = 10 * time.Second

// Run serves what the loader gives, loads again on SIGHUP and returns nil
// on SIGTERM; a loader error at start is returned unchanged.
func TestRunReloadsAndStops(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	cfg := loadTOML(t, "listen = \"127.0.0.1:0\"\nlog_level = \"error\"\n[[backend]]\naddress = \""+
		backend.Addr().String()+"\"\n")
	l := &fakeLoader{cfg: cfg}
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- Run(Options{Load: l.load, Signals: sigs}) }()
	sigs <- syscall.SIGHUP
	deadline := time.Now().Add(guard)
	for l.loads() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := l.loads(); n != 2 {
		t.Errorf("%d loads after SIGHUP, want 2", n)
	}
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after SIGTERM: %v", err)
		}
	case <-time.After(guard):
		t.Fatal("Run did not return after SIGTERM")
	}

	bad := errors.New("line 1: bad")
	l.set(nil, bad)
	if err := Run(Options{Load: l.load, Signals: sigs}); err != bad {
		t.Errorf("Run with a failing loader = %v, want its error", err)
	}
}
