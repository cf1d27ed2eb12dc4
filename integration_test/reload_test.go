package integration_test

// Reload on SIGHUP.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/admin"
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

// POST /reload reloads as SIGHUP does and answers with the outcome: what
// changed, or, for a bad file, the same error check-config gives, while
// the config in force keeps serving; it needs the admin token.
func TestReloadThroughAdminAPI(t *testing.T) {
	b0, b1 := testkit.StartBackend(t, "b0"), testkit.StartBackend(t, "b1")
	dir := t.TempDir()
	path := filepath.Join(dir, "stickyd.toml")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	adm := testkit.FreePort(t)
	head := fmt.Sprintf("admin = %q\nadmin_token_file = %q\n", adm, tokenFile)
	write := func(top, backends string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(head+top+backends), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	one := fmt.Sprintf("[[backend]]\nname = \"b0\"\naddress = %q\n", b0.Addr())
	write("", one)
	p := startStickyd(t, "--config", path)
	post := func(token string) (int, admin.ReloadOutcome) {
		t.Helper()
		code, body := adminCall(t, opsHTTP, "POST", "http://"+adm+"/reload", "", token)
		var out admin.ReloadOutcome
		if code != http.StatusUnauthorized {
			if err := json.Unmarshal([]byte(body), &out); err != nil {
				t.Fatalf("POST /reload: %d %q: %v", code, body, err)
			}
		}
		return code, out
	}

	write("", one+fmt.Sprintf("[[backend]]\nname = \"b1\"\naddress = %q\n", b1.Addr()))
	if code, _ := post(""); code != http.StatusUnauthorized {
		t.Errorf("without the token: %d, want 401", code)
	}
	if code, out := post("s3cret"); code != http.StatusOK || out.Result != admin.ReloadDone ||
		strings.Join(out.Added, ",") != "b1" || out.Backends != 2 {
		t.Errorf("adding b1: %d %+v", code, out)
	}
	if got := opsNames(opsBackends(t, adm)); strings.Join(got, ",") != "b0,b1" {
		t.Errorf("backends after the reload: %v", got)
	}

	write("hash_key = \"/33\"\n", one)
	code, out := post("s3cret")
	_, _, check := runStickyd(t, dir, nil, "", "check-config", path)
	_, want, _ := strings.Cut(check, "config: invalid: ")
	if code != http.StatusBadRequest || out.Result != admin.ReloadRejected || out.Fix == "" ||
		want == "" || !strings.HasSuffix(out.Error, strings.TrimSpace(want)) {
		t.Errorf("a bad file: %d %+v; check-config said %q", code, out, check)
	}
	if got := opsNames(opsBackends(t, adm)); strings.Join(got, ",") != "b0,b1" {
		t.Errorf("backends after a rejected reload: %v", got)
	}
	if name, _, _, err := visit("127.0.6.1", p.addr); err != nil || (name != "b0" && name != "b1") {
		t.Errorf("serving after a rejected reload: %q %v", name, err)
	}

	// A restart-only key changed: reloaded, and the key named.
	write("engine = \"goroutine\"\n", one)
	if code, out := post("s3cret"); code != http.StatusOK || strings.Join(out.Ignored, ",") != "engine" || strings.Join(out.Removed, ",") != "b1" {
		t.Errorf("engine changed: %d %+v", code, out)
	}
}
