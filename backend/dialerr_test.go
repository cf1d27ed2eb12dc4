package backend

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/stickyd/stickyd/internal/testkit"
)

// A client facing many dead backends gets one short error: the count of
// failed dials by kind and the first error, which errors.Is still sees.
func TestDialErrorsSummarised(t *testing.T) {
	var specs []Spec
	for i := 0; i < 300; i++ {
		specs = append(specs, Spec{Name: fmt.Sprintf("dead%d", i), Address: testkit.RefusedAddr(t, "127.0.0.1")})
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

// TestDialFailureSaysTheFix: a dial that fails for a reason the operator
// can fix logs that fix beside the error, for each kind it knows: real
// dials on loopback (refused, a backlog that never answers, a missing
// Unix socket).
func TestDialFailureSaysTheFix(t *testing.T) {
	closed := testkit.RefusedAddr(t, "127.0.0.1")
	missing := filepath.Join(t.TempDir(), "app.sock")
	for _, tc := range []struct {
		name, address, fix string
	}{
		{"refused", closed, "nothing listens on " + closed + ": start the backend, or correct its address"},
		{"timeout", testkit.BlackHole(t), "within connect_timeout"},
		{"no socket file", "unix:" + missing, "no Unix socket at " + missing + ": start the backend, or correct the path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.WarnLevel)
			set, err := NewSet([]Spec{{Name: "app", Address: tc.address}}, Options{DialTimeout: 200 * time.Millisecond}, zap.New(core))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := set.Dial(context.Background(), netip.MustParseAddr("198.51.100.7")); err == nil {
				t.Fatal("dial succeeded")
			}
			lines := logs.FilterMessageSnippet("backend dial failed").All()
			if len(lines) != 1 {
				t.Fatalf("%d dial failure lines, want 1", len(lines))
			}
			if fix, _ := lines[0].ContextMap()["fix"].(string); !strings.Contains(fix, tc.fix) {
				t.Errorf("fix %q, want it to contain %q", fix, tc.fix)
			}
		})
	}
	if fix := dialFix(fmt.Errorf("dial: %w", syscall.EACCES), "unix", "/run/app.sock"); !strings.Contains(fix, "permission on the socket") {
		t.Errorf("EACCES on a Unix socket: fix %q", fix) // root, as in CI, is never refused: not dialled for real
	}
	if fix := dialFix(errors.New("dial backend d: something else"), "tcp", "a:1"); fix != "" {
		t.Errorf("an unknown failure got a fix: %q", fix)
	}
}
