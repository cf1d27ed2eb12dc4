package backend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// A client facing many dead backends gets one short error: the count of
// failed dials by kind and the first error, which errors.Is still sees.
func TestDialErrorsSummarised(t *testing.T) {
	var specs []Spec
	for i := 0; i < 300; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, Spec{Name: fmt.Sprintf("dead%d", i), Address: ln.Addr().String()})
		ln.Close() // refused from now on
	}
	set, err := NewSet(specs, Options{DialTimeout: 5 * time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = set.Dial(context.Background(), netip.MustParseAddr("198.51.100.7"))
	if !errors.Is(err, ErrNoBackend) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("err %v: want ErrNoBackend wrapping ECONNREFUSED", err)
	}
	if msg := err.Error(); len(msg) > 300 || !strings.Contains(msg, "300 dials failed (300 refused); first: dial backend dead") {
		t.Errorf("error of %d bytes: %.400s", len(msg), msg)
	}
}

func TestDialErrorKinds(t *testing.T) {
	var d dialErrors
	d.add(fmt.Errorf("dial backend a: %w", syscall.ECONNREFUSED))
	d.add(fmt.Errorf("dial backend b: %w", context.DeadlineExceeded))
	d.add(fmt.Errorf("dial backend c: %w", syscall.ECONNREFUSED))
	d.add(errors.New("dial backend d: something else"))
	want := "backend: no backend available: 4 dials failed (2 refused, 1 timeout, 1 other); first: dial backend a: connection refused"
	if got := d.err(true).Error(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	var one dialErrors
	one.add(fmt.Errorf("dial backend a: %w", syscall.ECONNREFUSED))
	if got := one.err(true).Error(); got != "backend: no backend available: dial backend a: connection refused" {
		t.Errorf("one failure: %q", got)
	}
}
