package daemon

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/server"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// loadTOML parses and validates a config file.
func loadTOML(t *testing.T, src string) *config.Config {
	t.Helper()
	cfg, err := config.Load(strings.NewReader(src))
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fakeLoader is a config loader that returns the next config (or error)
// it is given.
type fakeLoader struct {
	mu   sync.Mutex
	cfg  *config.Config
	err  error
	runs int
}

func (l *fakeLoader) load() (*config.Config, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.runs++
	return l.cfg, l.err
}

func (l *fakeLoader) loads() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.runs
}

func (l *fakeLoader) set(cfg *config.Config, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cfg, l.err = cfg, err
}

// testDaemon is a daemon of cfg as start leaves it, without listeners or
// workers: a server with cfg's backend set and cfg's loops. Its log is
// observed.
func testDaemon(t *testing.T, cfg *config.Config) (*daemon, *fakeLoader, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	l := &fakeLoader{cfg: cfg}
	d := &daemon{load: l.load, log: zap.New(core), boot: cfg, cfg: cfg}
	set, err := d.buildSet(cfg, d.firstDNS(t.Context(), cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	d.dns = nil
	d.srv = server.New(serverOptions(cfg, fdBudget{}), set, relay.NewGoroutineEngine(), d.log)
	d.loops = d.startLoops(cfg)
	t.Cleanup(d.stopLoops)
	return d, l, logs
}

func names(s *backend.Set) []string {
	var out []string
	for _, b := range s.Backends() {
		out = append(out, b.Name)
	}
	slices.Sort(out)
	return out
}

const twoBackends = "listen = \"127.0.0.1:3000\"\nhash_key = \"ip\"\n" +
	"[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:7001\"\n" +
	"[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:7002\"\n"

// A reload applies the live settings (backends, hash_key, drain_timeout,
// health) at once and keeps the Backend values that did not change, with
// their state; the settings that need a restart are named in one warning
// and left as they were.
func TestReloadAppliesLiveKeys(t *testing.T) {
	d, l, logs := testDaemon(t, loadTOML(t, twoBackends))
	a := d.srv.Backends().ByName("a")
	a.SetDraining(true)
	l.set(loadTOML(t, strings.Replace(twoBackends, "name = \"b\"\naddress = \"127.0.0.1:7002\"",
		"name = \"c\"\naddress = \"127.0.0.1:7003\"", 1)+
		"[health]\nrise = 5\n"), nil)
	l.cfg.DrainTimeout = config.Duration{Duration: 7 * time.Second}
	// Not live: listen and engine.
	l.cfg.Listen, l.cfg.Engine = "127.0.0.1:4000", "goroutine"
	l.cfg.HashKey = "/24"
	out := d.reload()
	if out.Result != admin.ReloadDone || !slices.Equal(out.Added, []string{"c"}) || !slices.Equal(out.Removed, []string{"b"}) ||
		out.Backends != 2 || !slices.Equal(out.Ignored, []string{"engine", "listen"}) || out.Error != "" {
		t.Errorf("outcome %+v", out)
	}

	set := d.srv.Backends()
	if got := names(set); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("backends after reload %q, want a and c", got)
	}
	if set.ByName("a") != a || !a.Draining() {
		t.Error("backend a was rebuilt: its draining state is lost")
	}
	if set.Lookup(netip.MustParseAddr("192.0.2.1")) != set.Lookup(netip.MustParseAddr("192.0.2.200")) {
		t.Error("hash_key /24 not applied: two clients of one /24 got different backends")
	}
	if d.cfg != l.cfg || d.cfg.Drain().Seconds() != 7 {
		t.Errorf("config in force not replaced: drain %v", d.cfg.Drain())
	}
	warn := logs.FilterMessageSnippet("need a restart").All()
	if len(warn) != 1 {
		t.Fatalf("%d restart warnings, want 1", len(warn))
	}
	keys, _ := warn[0].ContextMap()["keys"].([]any)
	if got := []string{keys[0].(string), keys[1].(string)}; len(keys) != 2 || !slices.Equal(got, []string{"engine", "listen"}) {
		t.Errorf("restart keys %v, want engine and listen", keys)
	}
	if d.boot.Listen != "127.0.0.1:3000" {
		t.Error("the boot config was changed")
	}
}

// A config the loader rejects, or whose backend set cannot be built,
// leaves the config and the backends in force.
func TestReloadRejected(t *testing.T) {
	d, l, logs := testDaemon(t, loadTOML(t, twoBackends))
	before := d.srv.Backends()
	l.set(nil, errors.New("line 3: bad"))
	if out := d.reload(); out.Result != admin.ReloadRejected || out.Error != "line 3: bad" || out.Fix == "" {
		t.Errorf("outcome of a config the loader rejects: %+v", out)
	}
	bad := loadTOML(t, twoBackends)
	bad.Backends[1].Address = "127.0.0.1:3000" // stickyd's own listener
	d.self = newSelfAddrs(mustTCPAddr(t, "127.0.0.1:3000"))
	l.set(bad, nil)
	if out := d.reload(); out.Result != admin.ReloadRejected || !strings.Contains(out.Error, "127.0.0.1:3000") {
		t.Errorf("outcome of a set that cannot be built: %+v", out)
	}
	if d.srv.Backends() != before || d.cfg == bad {
		t.Error("a rejected reload changed what is in force")
	}
	if n := logs.FilterMessageSnippet("reload rejected").Len(); n != 2 {
		t.Errorf("%d rejections logged, want 2", n)
	}
}

// After shutdown began, a reload in flight installs nothing.
func TestReloadAfterStopInstallsNothing(t *testing.T) {
	d, l, _ := testDaemon(t, loadTOML(t, twoBackends))
	before := d.srv.Backends()
	d.stopLoops()
	l.set(loadTOML(t, twoBackends+"[[backend]]\nname = \"c\"\naddress = \"127.0.0.1:7003\"\n"), nil)
	if out := d.reload(); out.Result != admin.ReloadStopped {
		t.Errorf("outcome after the stop began: %+v", out)
	}
	if d.srv.Backends() != before || d.loops != nil {
		t.Error("a reload after stopLoops installed a set or loops")
	}
}

// SIGHUPs that come while a reload is pending fold into it.
func TestRequestReloadCoalesces(t *testing.T) {
	d := &daemon{reloads: newReloadRequests()}
	for range 5 {
		d.requestReload() // never blocks
	}
	if w, ok := d.reloads.take(); len(d.reloads.wake) != 0 || !ok || len(w) != 0 {
		t.Errorf("five SIGHUPs: %d waiters, pending %v; want one reload", len(w), ok)
	}
	if _, ok := d.reloads.take(); ok {
		t.Error("a second reload for five SIGHUPs")
	}
}
