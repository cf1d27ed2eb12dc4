package backend

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"go.uber.org/zap"
)

// A backend host name that resolves to the caller's own listener fails the
// dial with ErrSelfLoop (the connection is closed, the backend cools down)
// instead of looping; an unrelated listener on another port is dialed.
func TestDialRefusesHostNameReachingSelf(t *testing.T) {
	self, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	selfAP := self.Addr().(*net.TCPAddr).AddrPort()
	isSelf := func(ap netip.AddrPort) bool { return ap.Port() == selfAP.Port() && ap.Addr().IsLoopback() }
	_, selfPort, _ := net.SplitHostPort(self.Addr().String())
	_, otherPort, _ := net.SplitHostPort(other.Addr().String())
	set, err := NewSet([]Spec{{Name: "loop", Address: "localhost:" + selfPort}}, Options{IsSelf: isSelf}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = set.Dial(context.Background(), netip.MustParseAddr("192.0.2.1"))
	if !errors.Is(err, ErrSelfLoop) {
		t.Fatalf("Dial = %v, want ErrSelfLoop", err)
	}
	if b := set.Backends()[0]; b.State() != StateCooldown || b.DialFailures() != 1 || b.Active() != 0 {
		t.Errorf("after the loop: state %s, failures %d, active %d", b.State(), b.DialFailures(), b.Active())
	}
	set, err = NewSet([]Spec{{Name: "ok", Address: "localhost:" + otherPort}}, Options{IsSelf: isSelf}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	_, conn, err := set.Dial(context.Background(), netip.MustParseAddr("192.0.2.1"))
	if err != nil {
		t.Fatalf("dial another port by name: %v", err)
	}
	conn.Close()
}
