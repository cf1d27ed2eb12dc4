package integration_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/discovery/dnstest"
	"github.com/stickyd/stickyd/internal/testkit"
)

// A backend whose address is stickyd's own listener is refused at start
// (by IP, by a host name resolving to it, by a worker port on it) and on
// reload, with a clear error, instead of looping until the connection cap
// is full (issue 11, item 11).
func TestSelfLoopRefused(t *testing.T) {
	addr := testkit.FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ip", []string{"--listen", addr, "--backend", "self=" + addr}},
		{"host name", []string{"--listen", addr, "--backend", "localhost:" + port}},
		{"worker port", []string{"--listen", addr, "--workers", "1", "--port-base", port, "--", "stickyd", "hello-worker"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runStickyd(t, "", nil, "", tc.args...)
			if code != 2 || !strings.Contains(stderr, "stickyd's own listen address") || !strings.Contains(stderr, ":"+port) {
				t.Errorf("exit %d, stderr %q; want exit 2 naming the loop", code, stderr)
			}
		})
	}

	b := testkit.StartBackend(t, "b0")
	path := filepath.Join(t.TempDir(), "c.toml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf("[[backend]]\nname = \"b0\"\naddress = %q\n", b.Addr()))
	p := startStickyd(t, "--config", path)
	write(fmt.Sprintf("[[backend]]\nname = \"b0\"\naddress = %q\n[[backend]]\nname = \"me\"\naddress = %q\n", b.Addr(), p.addr))
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.WaitFor(t, "reload rejected", func() bool { return len(reloadRejections(p)) > 0 })
	if got := reloadRejections(p)[0]; !strings.Contains(got, "backend me at "+p.addr) {
		t.Errorf("reload rejected with %q", got)
	}
	for i := range 5 {
		if name, _, err := hello(testkit.ClientIP(i), p.addr); err != nil || name != "b0" {
			t.Errorf("after the rejected reload: %q %v", name, err)
		}
	}
	if opsLogged(p, `"msg":"config reloaded"`) {
		t.Error("the looping config was installed")
	}
}

// A DNS change that adds stickyd's own listen address is not applied (one
// error line); the backends in force keep serving.
func TestSelfLoopByDNSNotApplied(t *testing.T) {
	dns := dnstest.New(t)
	port, _, _ := opsSamePort(t)
	dns.SetHost("app.test.", "127.0.0.2")
	addr := "127.0.0.1:" + port
	p := launch(t, t.TempDir(), addr, "--listen", addr, "--log-format", "json",
		"--backend", "dns:app.test:"+port, "--dns-server", dns.Addr, "--dns-interval", "100ms")
	dns.SetHost("app.test.", "127.0.0.2", "127.0.0.1")
	testkit.WaitFor(t, "the DNS change refused", func() bool { return opsLogged(p, `"msg":"dns change not applied"`) })
	if !opsLogged(p, "stickyd's own listen address") {
		t.Errorf("the refusal does not name the loop:\n%s", p.stderr.String())
	}
	for i := range 5 {
		if name, _, err := hello(testkit.ClientIP(i), p.addr); err != nil || name != "pod2" {
			t.Errorf("client %d: %q %v", i, name, err)
		}
	}
}
