package integration_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A backend whose address is stickyd's own listener is refused at start
// (by IP, by a host name resolving to it, by a worker port on it) and on
// reload, with a clear error, instead of looping until the connection cap
// is full (issue 11, item 11).
func TestSelfLoopRefused(t *testing.T) {
	addr := freePort(t)
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

	b := startBackend(t, "b0")
	path := filepath.Join(t.TempDir(), "c.toml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf("[[backend]]\nname = \"b0\"\naddress = %q\n", b.addr()))
	p := startStickyd(t, "--config", path)
	write(fmt.Sprintf("[[backend]]\nname = \"b0\"\naddress = %q\n[[backend]]\nname = \"me\"\naddress = %q\n", b.addr(), p.addr))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "reload rejected", func() bool { return len(reloadRejections(p)) > 0 })
	if got := reloadRejections(p)[0]; !strings.Contains(got, "backend me at "+p.addr) {
		t.Errorf("reload rejected with %q", got)
	}
	for i := range 5 {
		if name, _, err := hello(clientIP(i), p.addr); err != nil || name != "b0" {
			t.Errorf("after the rejected reload: %q %v", name, err)
		}
	}
	if opsLogged(p, `"msg":"config reloaded"`) {
		t.Error("the looping config was installed")
	}
}
