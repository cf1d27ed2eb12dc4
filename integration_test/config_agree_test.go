package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// One validation path: check-config, the daemon at start, the daemon on
// SIGHUP and lookup reject every bad value with the same error, naming the
// key and its line (issue 11, item 14).
func TestBadValuesRejectedAlikeEverywhere(t *testing.T) {
	b := testkit.StartBackend(t, "b0")
	good := fmt.Sprintf("[[backend]]\nname = \"b0\"\naddress = %q\n", b.Addr())
	workers := "[workers]\ncommand = [\"stickyd\", \"hello-worker\"]\ncount = 2\n"
	tests := []struct{ name, src, want string }{
		{"hash_key bogus", "hash_key = \"bogus\"\n" + good, `line 1: key "hash_key"`},
		{"hash_key /33", "\nhash_key = \"/33\"\n" + good, `line 2: key "hash_key"`},
		{"weight too big", good + "weight = 100000000\n", `line 4: key "backend[0].weight"`},
		{"weight 0", good + "weight = 0\n", `line 4: key "backend[0].weight"`},
		{"weight negative", good + "weight = -1\n", `line 4: key "backend[0].weight"`},
		{"balance_factor", "balance_factor = 0.5\n" + good, `line 1: key "balance_factor"`},
		{"port_base negative", good + workers + "port_base = -1\n", `line 7: key "workers.port_base"`},
		{"port_base overflow", good + workers + "port_base = 65535\n", `line 7: key "workers.port_base"`},
	}
	dir := t.TempDir()
	live := filepath.Join(dir, "live.toml")
	write := func(path, src string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(live, good)
	p := startStickyd(t, "--config", live)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("bad%d.toml", i))
			write(path, tc.src)
			code, _, check := runStickyd(t, dir, nil, "", "check-config", path)
			serveCode, _, serve := runStickyd(t, dir, nil, "", "--config", path, "--listen", testkit.FreePort(t))
			lookupCode, _, lookup := runStickyd(t, dir, nil, "", "lookup", "--config", path, "192.0.2.1")
			if code != 2 || serveCode != 2 || lookupCode != 2 || check != serve || check != lookup ||
				!strings.Contains(check, tc.want) {
				t.Fatalf("want exit 2 and %q from all three:\ncheck-config %d %q\nserve %d %q\nlookup %d %q",
					tc.want, code, check, serveCode, serve, lookupCode, lookup)
			}
			write(live, tc.src)
			before := len(reloadRejections(p))
			p.cmd.Process.Signal(syscall.SIGHUP)
			testkit.WaitFor(t, "reload rejected", func() bool { return len(reloadRejections(p)) > before })
			// The same error, but for the file's name.
			_, got, _ := strings.Cut(reloadRejections(p)[before], "config: invalid: ")
			if _, want, _ := strings.Cut(check, "config: invalid: "); got == "" || got != strings.TrimSpace(want) {
				t.Errorf("SIGHUP rejected with %q; check-config said %q", got, check)
			}
		})
	}
	write(live, good)
}

// reloadRejections returns the errors of stickyd's "reload rejected" lines.
func reloadRejections(p *proc) []string {
	var out []string
	for _, e := range logsOf[struct{ Error string }](p, "reload rejected; the running config stays in force") {
		out = append(out, e.Error)
	}
	return out
}
