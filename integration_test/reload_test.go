package integration_test

// Reload on SIGHUP.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

func TestReloadSIGHUP(t *testing.T) {
	b0, b1, b2 := testkit.StartBackend(t, "b0"), testkit.StartBackend(t, "b1"), testkit.StartBackend(t, "b2")
	adm := testkit.FreePort(t)
	path := filepath.Join(t.TempDir(), "stickyd.toml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	table := func(b *testkit.Backend, weight int) string {
		return fmt.Sprintf("[[backend]]\nname = %q\naddress = %q\nweight = %d\n", b.Name, b.Addr(), weight)
	}
	write(fmt.Sprintf("admin = %q\n", adm) + table(b0, 1) + table(b1, 1))
	p := startStickyd(t, "--config", path)
	ip := opsHomeIP(t, adm, "b0", 0)
	c := testkit.Dial(t, ip, p.addr)
	defer c.Close()
	name, _, br := testkit.Greeting(t, c)
	if name != "b0" {
		t.Fatalf("held connection went to %s", name)
	}

	write(fmt.Sprintf("admin = %q\nengine = \"goroutine\"\n", adm) + table(b0, 3) + table(b2, 1))
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.WaitFor(t, "config reloaded", func() bool { return opsLogged(p, `"msg":"config reloaded"`) })
	if !opsLogged(p, `"keys":["engine"]`) {
		t.Error("the engine change was not logged as ignored")
	}
	got := opsBackends(t, adm)
	if names := opsNames(got); !slices.Equal(names, []string{"b0", "b2"}) || got["b0"].Weight != 3 {
		t.Fatalf("after reload: %+v", got)
	}
	if got["b0"].Active != 1 || got["b0"].Total != 1 {
		t.Errorf("b0 lost its connection state across the reload: %+v", got["b0"])
	}
	opsEcho(t, c, br, "still here")
	names := make([]string, 100)
	helloAll(t, p.addr, names)
	for i, n := range names {
		if n != "b0" && n != "b2" {
			t.Fatalf("client %d went to %s after reload", i, n)
		}
	}

	write(fmt.Sprintf("admin = %q\n\nsend_proxy = \"v9\"\n", adm) + table(b1, 1))
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.WaitFor(t, "reload rejected", func() bool { return opsLogged(p, `"msg":"reload rejected; the running config stays in force"`) })
	if !opsLogged(p, `line 3: key \"send_proxy\"`) {
		t.Errorf("the rejection does not name the key and line:\n%s", p.stderr.String())
	}
	if names := opsNames(opsBackends(t, adm)); !slices.Equal(names, []string{"b0", "b2"}) {
		t.Errorf("the invalid config replaced the backends: %v", names)
	}
	if name, _, err := hello(ip, p.addr); err != nil || name != "b0" {
		t.Errorf("after a rejected reload: %q %v", name, err)
	}
}
