package discovery_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stickyd/stickyd/discovery"
	"github.com/stickyd/stickyd/discovery/dnstest"
	"github.com/stickyd/stickyd/internal/testkit"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestDNSResolveHostPort(t *testing.T) {
	srv := dnstest.New(t)
	srv.SetHost("app.test.", "127.0.0.3", "127.0.0.2", "::1", "::ffff:127.0.0.4")
	r := discovery.NewResolver(srv.Addr)
	got, err := r.Resolve(context.Background(), "app.test:8080")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.4:8080", "[::1]:8080"}
	if !slices.Equal(got, want) {
		t.Errorf("Resolve = %q, want %q", got, want)
	}
}

func TestDNSResolveSRV(t *testing.T) {
	srv := dnstest.New(t)
	srv.SetSRV("_app._tcp.test.", dnstest.Target{Host: "a.test.", Port: 2000},
		dnstest.Target{Host: "b.test.", Port: 1000}, dnstest.Target{Host: "gone.test.", Port: 3000})
	srv.SetHost("a.test.", "127.0.0.5")
	srv.SetHost("b.test.", "127.0.0.6", "127.0.0.7")
	r := discovery.NewResolver(srv.Addr)
	got, err := r.Resolve(context.Background(), "_app._tcp.test.")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.5:2000", "127.0.0.6:1000", "127.0.0.7:1000"} // gone.test is skipped
	if !slices.Equal(got, want) {
		t.Errorf("Resolve = %q, want %q", got, want)
	}
}

func TestDNSResolveErrors(t *testing.T) {
	srv := dnstest.New(t)
	r := discovery.NewResolver(srv.Addr)
	for _, target := range []string{"missing.test:80", "_x._tcp.missing.test", "app.test:http"} {
		if addrs, err := r.Resolve(context.Background(), target); err == nil {
			t.Errorf("Resolve(%s) = %q, want an error", target, addrs)
		}
	}
	srv.SetHost("ok.test.", "127.0.0.9")
	got, err := r.ResolveAll(context.Background(), []string{"ok.test:1", "missing.test:1"})
	if err == nil || !slices.Equal(got["ok.test:1"], []string{"127.0.0.9:1"}) || len(got) != 1 {
		t.Errorf("ResolveAll = %q, %v", got, err)
	}
}

// The watcher reports changes, keeps the last answer through failures, and
// logs a failure and the recovery once each.
func TestDNSWatcherFollowsChanges(t *testing.T) {
	srv := dnstest.New(t)
	srv.SetHost("app.test.", "127.0.0.2")
	core, logs := observer.New(zap.InfoLevel)
	w := &discovery.Watcher{Resolver: discovery.NewResolver(srv.Addr), Targets: []string{"app.test:80"},
		Interval: 20 * time.Millisecond, Log: zap.New(core)}
	updates := make(chan map[string][]string, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	known := map[string][]string{"app.test:80": {"127.0.0.2:80"}}
	go func() { w.Run(ctx, known, func(m map[string][]string) { updates <- m }); close(done) }()
	defer func() {
		cancel()
		<-done
	}()
	next := func() []string {
		t.Helper()
		return testkit.Await(t, updates, "no update")["app.test:80"]
	}
	srv.SetHost("app.test.", "127.0.0.3", "127.0.0.2")
	if got := next(); !slices.Equal(got, []string{"127.0.0.2:80", "127.0.0.3:80"}) {
		t.Fatalf("scaled up: %q", got)
	}
	srv.SetHost("app.test.") // NXDOMAIN: keep the last answer, log once
	q := srv.Queries()
	testkit.WaitFor(t, "several failed rounds", func() bool { return srv.Queries() > q+10 })
	if l := logs.FilterMessageSnippet("did not resolve").All(); len(l) != 1 {
		t.Errorf("%d failure lines, want 1", len(l))
	} else if l[0].ContextMap()["fix"] != discovery.Fix {
		t.Errorf("failure line %v, want the fix", l[0].ContextMap())
	}
	srv.SetHost("app.test.", "127.0.0.3")
	if got := next(); !slices.Equal(got, []string{"127.0.0.3:80"}) {
		t.Fatalf("scaled down: %q", got)
	}
	if n := logs.FilterMessageSnippet("resolves again").Len(); n != 1 {
		t.Errorf("%d recovery lines, want 1", n)
	}
	select {
	case m := <-updates:
		t.Errorf("update without a change: %q", m)
	default:
	}
	if !slices.Equal(known["app.test:80"], []string{"127.0.0.2:80"}) {
		t.Error("Run modified known")
	}
}

// An SRV name whose every target fails to resolve is an error, not an
// empty answer.
func TestDNSSRVAllTargetsGone(t *testing.T) {
	srv := dnstest.New(t)
	srv.SetSRV("_e._tcp.test.", dnstest.Target{Host: "nohost.test.", Port: 1})
	if addrs, err := discovery.NewResolver(srv.Addr).Resolve(context.Background(), "_e._tcp.test"); err == nil {
		t.Fatalf("Resolve = %q, want an error", addrs)
	}
}
