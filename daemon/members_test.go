package daemon

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/config"
	"go.uber.org/zap"
)

func mustTCPAddr(t *testing.T, s string) net.Addr {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func specNames(specs []backend.Spec) []string {
	var out []string
	for _, s := range specs {
		out = append(out, s.Name)
	}
	return out
}

// The list merges the static backends, each dns backend's addresses (an
// address already named is skipped, the table's weight kept) and the
// worker slots, in that order.
func TestMemberSpecs(t *testing.T) {
	cfg := &config.Config{Backends: []config.Backend{
		{Name: "a", Address: "127.0.0.1:7001"},
		{DNS: "db:80", Weight: 3},
		{Address: "127.0.0.1:7002"},
		{DNS: "web:80"},
	}}
	answers := map[string][]string{
		"db:80":  {"10.0.0.1:80", "10.0.0.2:80"},
		"web:80": {"10.0.0.2:80", "10.0.0.3:80", "127.0.0.1:7002"},
	}
	workers := []backend.Spec{{Name: "worker-0", Address: "127.0.0.1:9000", Weight: 1, NotReady: true}}
	specs := memberSpecs(cfg, answers, workers)
	want := []string{"a", "127.0.0.1:7002", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "worker-0"}
	if got := specNames(specs); !slices.Equal(got, want) {
		t.Fatalf("specs %q, want %q", got, want)
	}
	if specs[2].Weight != 3 || specs[4].Weight != 1 || !specs[5].NotReady {
		t.Errorf("weights or readiness lost: %+v", specs)
	}
}

// A DNS change replaces the set and keeps the Backend values that stay;
// answers found for a config that a reload has replaced are dropped.
func TestApplyDNS(t *testing.T) {
	cfg := loadTOML(t, "[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:7001\"\n[[backend]]\ndns = \"127.0.0.5:80\"\n")
	d, _, _ := testDaemon(t, cfg)
	if got := names(d.srv.Backends()); !slices.Equal(got, []string{"127.0.0.5:80", "a"}) {
		t.Fatalf("start: backends %q (an IP literal resolves to itself)", got)
	}
	a := d.srv.Backends().ByName("a")
	d.applyDNS(cfg, map[string][]string{"127.0.0.5:80": {"127.0.0.6:80", "127.0.0.7:80"}})
	if got := names(d.srv.Backends()); !slices.Equal(got, []string{"127.0.0.6:80", "127.0.0.7:80", "a"}) {
		t.Errorf("after a dns change: %q", got)
	}
	if d.srv.Backends().ByName("a") != a {
		t.Error("a dns change rebuilt an unchanged backend")
	}
	before := d.srv.Backends()
	d.applyDNS(loadTOML(t, "[[backend]]\naddress = \"127.0.0.1:1\"\n"), map[string][]string{"x": {"127.0.0.9:1"}})
	if d.srv.Backends() != before {
		t.Error("answers for a replaced config were applied")
	}
}

// At a reload a dns name that does not resolve keeps the answer in force.
func TestReloadDNSKeepsFailedNames(t *testing.T) {
	d := &daemon{log: testLog(t), dns: map[string][]string{"gone.invalid:80": {"10.0.0.1:80"}}}
	cfg := loadTOML(t, "dns_server = \"127.0.0.1:1\"\n[[backend]]\ndns = \"gone.invalid:80\"\n[[backend]]\ndns = \"127.0.0.5:80\"\n")
	got := d.reloadDNS(cfg)
	if !slices.Equal(got["gone.invalid:80"], []string{"10.0.0.1:80"}) || !slices.Equal(got["127.0.0.5:80"], []string{"127.0.0.5:80"}) {
		t.Errorf("reloadDNS = %v", got)
	}
}

// setDiff names what a change added and removed.
func TestSetDiff(t *testing.T) {
	mk := func(names ...string) *backend.Set {
		var specs []backend.Spec
		for _, n := range names {
			specs = append(specs, backend.Spec{Name: n, Address: "127.0.0.1:1", Weight: 1})
		}
		s, err := backend.NewSet(specs, backend.Options{}, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	added, removed := setDiff(mk("a", "b"), mk("b", "c", "d"))
	if !slices.Equal(added, []string{"c", "d"}) || !slices.Equal(removed, []string{"a"}) {
		t.Errorf("added %q removed %q", added, removed)
	}
}

// lookup's set names the backends as the daemon does: static, dns and
// worker slots; a dns failure is reported, not fatal.
func TestRoutingSet(t *testing.T) {
	cfg := loadTOML(t, "dns_server = \"127.0.0.1:1\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:7001\"\n"+
		"[[backend]]\ndns = \"127.0.0.5:80\"\n[[backend]]\ndns = \"gone.invalid:80\"\n[workers]\ncommand = [\"x\"]\ncount = 2\n")
	var dnsErr error
	set, err := RoutingSet(context.Background(), cfg, func(err error) { dnsErr = err })
	if err != nil {
		t.Fatal(err)
	}
	if got := names(set); !slices.Equal(got, []string{"127.0.0.5:80", "a", "worker-0", "worker-1"}) {
		t.Errorf("RoutingSet: %q", got)
	}
	if dnsErr == nil || errors.Is(dnsErr, context.Canceled) {
		t.Errorf("dns error %v, want the failure of gone.invalid", dnsErr)
	}
}

// testLog is a logger that writes nothing.
func testLog(t *testing.T) *zap.Logger { t.Helper(); return zap.NewNop() }
