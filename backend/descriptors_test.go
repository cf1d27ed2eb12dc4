package backend

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestDialOutOfDescriptorsIsNotTheBackends checks that a dial failing
// with EMFILE or ENFILE (stickyd's own shortage) counts against no backend,
// puts none in cool-down and tries no other.
func TestDialOutOfDescriptorsIsNotTheBackends(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE} {
		set, err := NewSet([]Spec{{Name: "a", Address: "127.0.0.1:1"}, {Name: "b", Address: "127.0.0.1:2"}},
			Options{EjectAfter: 1}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		dials := 0
		dial := func(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error) {
			dials++
			return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("socket", errno)}
		}
		_, _, err = set.DialWith(context.Background(), netip.MustParseAddr("127.9.9.9"), dial)
		if !errors.Is(err, ErrNoDescriptors) || !errors.Is(err, errno) {
			t.Errorf("%v: DialWith error %v, want ErrNoDescriptors wrapping the errno", errno, err)
		}
		if dials != 1 {
			t.Errorf("%v: %d dials, want 1 (no other backend tried)", errno, dials)
		}
		for _, b := range set.Backends() {
			if b.DialFailures() != 0 || b.State() != StateUp {
				t.Errorf("%v: backend %s has %d failures, state %s; want 0, %s", errno, b.Name, b.DialFailures(), b.State(), StateUp)
			}
		}
	}
}

// TestDialWouldBlockCountsNothing checks that ErrWouldBlock from a
// DialFunc (a loop's dialer) comes back at once: no other backend tried,
// no failure counted, no cool-down, and a probe's turn given back, so the
// dial from a goroutine that follows finds everything as it was.
func TestDialWouldBlockCountsNothing(t *testing.T) {
	set, err := NewSet([]Spec{{Name: "a", Address: "127.0.0.1:1"}, {Name: "b", Address: "127.0.0.1:2"}},
		Options{EjectAfter: 1}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	a := set.Backends()[0]
	a.ejected.Store(true) // a cool-down that is over: the next dial probes
	dials := 0
	wouldBlock := func(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error) {
		dials++
		return nil, ErrWouldBlock
	}
	ip := netip.MustParseAddr("127.9.9.9")
	for range 2 {
		if _, _, err := set.DialWith(context.Background(), ip, wouldBlock); !errors.Is(err, ErrWouldBlock) {
			t.Fatalf("DialWith: %v, want ErrWouldBlock", err)
		}
	}
	if dials != 2 {
		t.Errorf("%d dials for 2 DialWith calls, want 2 (no other backend tried)", dials)
	}
	for _, b := range set.Backends() {
		if b.DialFailures() != 0 || b.dialing.Load() != 0 || b.probing.Load() {
			t.Errorf("backend %s: %d failures, dialing %d, probing %v; want none", b.Name, b.DialFailures(), b.dialing.Load(), b.probing.Load())
		}
	}
}
