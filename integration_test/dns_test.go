package integration_test

// DNS discovery: A/AAAA scaling and SRV.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stickyd/stickyd/discovery/dnstest"
	"github.com/stickyd/stickyd/internal/testkit"
)

// opsSamePort starts backends on 127.0.0.2 and 127.0.0.3 with one port, as
// the pods of a headless Service are.
func opsSamePort(t *testing.T) (port string, b2, b3 *testkit.Backend) {
	t.Helper()
	for range 20 {
		b2 = opsBackendAt(t, "pod2", "127.0.0.2:0")
		_, port, _ = net.SplitHostPort(b2.Addr())
		ln, err := net.Listen("tcp", "127.0.0.3:"+port)
		if err != nil {
			b2.Close()
			continue
		}
		return port, b2, testkit.ServeBackend(t, "pod3", ln)
	}
	t.Fatal("no port free on both 127.0.0.2 and 127.0.0.3")
	return
}

// A name with a port is followed as it scales up and down; established
// connections to an address that left stay up; a DNS outage keeps the last
// answer.
func TestDNSDiscoveryFollowsScaling(t *testing.T) {
	dns := dnstest.New(t)
	port, _, _ := opsSamePort(t)
	dns.SetHost("app.test.", "127.0.0.2")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "dns:app.test:"+port, "--dns-server", dns.Addr,
		"--dns-interval", "100ms", "--admin", adm)
	pod2, pod3 := "127.0.0.2:"+port, "127.0.0.3:"+port
	if names := opsNames(opsBackends(t, adm)); !slices.Equal(names, []string{pod2}) {
		t.Fatalf("backends %v, want [%s]", names, pod2)
	}
	ip := testkit.ClientIP(0)
	c := testkit.Dial(t, ip, p.addr)
	defer c.Close()
	name, _, br := testkit.Greeting(t, c)
	if name != "pod2" {
		t.Fatalf("went to %s", name)
	}

	dns.SetHost("app.test.", "127.0.0.3", "127.0.0.2")
	testkit.WaitFor(t, "scale up to two", func() bool { return len(opsBackends(t, adm)) == 2 })
	names := make([]string, 100)
	helloAll(t, p.addr, names)
	count := map[string]int{}
	for i, n := range names {
		count[n]++
		if home := opsLookup(t, adm, testkit.ClientIP(i)).Home; (home == pod2) != (n == "pod2") {
			t.Fatalf("client %d went to %s, lookup says %s", i, n, home)
		}
	}
	if count["pod2"] == 0 || count["pod3"] == 0 {
		t.Errorf("clients after scale-up: %v", count)
	}

	dns.SetHost("app.test.", "127.0.0.3")
	testkit.WaitFor(t, "scale down to pod3", func() bool { return slices.Equal(opsNames(opsBackends(t, adm)), []string{pod3}) })
	opsEcho(t, c, br, "pod2 left DNS but this connection stays")
	helloAll(t, p.addr, names)
	for i, n := range names {
		if n != "pod3" {
			t.Fatalf("client %d went to %s after scale-down", i, n)
		}
	}

	q := dns.Queries()
	dns.SetHost("app.test.") // NXDOMAIN
	testkit.WaitFor(t, "failed resolutions", func() bool { return dns.Queries() > q+6 })
	if names := opsNames(opsBackends(t, adm)); !slices.Equal(names, []string{pod3}) {
		t.Errorf("a DNS failure changed the backends: %v", names)
	}
	if !opsLogged(p, "keeping its last addresses") || !opsLogged(p, "check the name (a typo") {
		t.Error("the DNS failure was not logged with its fix")
	}
}

// SRV names give each target its own port; replicas name the backends
// alike, and `stickyd lookup` resolves them too.
func TestDNSDiscoverySRV(t *testing.T) {
	dns := dnstest.New(t)
	a, b := testkit.StartBackend(t, "a"), testkit.StartBackend(t, "b")
	port := func(tb *testkit.Backend) uint16 {
		n, _ := strconv.Atoi(tb.Addr()[strings.LastIndexByte(tb.Addr(), ':')+1:])
		return uint16(n)
	}
	dns.SetSRV("_app._tcp.test.", dnstest.Target{Host: "a.test.", Port: port(a)}, dnstest.Target{Host: "b.test.", Port: port(b)})
	dns.SetHost("a.test.", "127.0.0.1")
	dns.SetHost("b.test.", "127.0.0.1")
	dir := t.TempDir()
	cfg := fmt.Sprintf("dns_server = %q\ndns_interval = \"1s\"\n[[backend]]\ndns = \"_app._tcp.test\"\n", dns.Addr)
	path := filepath.Join(dir, "stickyd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--config", path, "--admin", adm)
	want := []string{a.Addr(), b.Addr()}
	slices.Sort(want)
	if names := opsNames(opsBackends(t, adm)); !slices.Equal(names, want) {
		t.Fatalf("backends %v, want the two SRV targets", names)
	}
	names := make([]string, 60)
	helloAll(t, p.addr, names)
	lookup := opsRunLookup(t, []string{"--config", path}, 60)
	byAddr := map[string]string{a.Addr(): "a", b.Addr(): "b"}
	for i, n := range names {
		if byAddr[lookup[i]] != n {
			t.Fatalf("client %d: stickyd lookup says %s, connection went to %s", i, lookup[i], n)
		}
	}
	if !slices.Contains(names, "a") || !slices.Contains(names, "b") {
		t.Errorf("clients: %v", names)
	}
}
