package integration_test

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// MIGRATING.md's proof: the socketio-sticky-session app of the blog posts
// (examples/migrate/before.js), moved to stickyd by changing at most three
// lines (examples/migrate/app.js, shown in MIGRATING.md), runs under
// `stickyd --workers 4 -- node app.js`; 200 socket.io clients, each on its
// own loopback address, with socket.io's default transports, all connect,
// upgrade, stay on their worker and are told their own IP.

// migrateExample returns examples/migrate, skipping the test when its npm
// packages are missing (./test.sh installs them).
func migrateExample(t *testing.T) string {
	t.Helper()
	socketIOExample(t) // node, and socket.io-client for the clients
	return npmExample(t, "migrate", "express", "socket.io", "stickyd-worker/node_modules/proxy-protocol-js")
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(b), "\n")
}

// TestMigrateAtMostThreeLines: app.js is before.js with at most three code
// lines changed (the opening comment aside), and MIGRATING.md shows both
// files as they are.
func TestMigrateAtMostThreeLines(t *testing.T) {
	before := readLines(t, "../examples/migrate/before.js")
	after := readLines(t, "../examples/migrate/app.js")
	if len(before) != len(after) {
		t.Fatalf("before.js has %d lines, app.js %d: want the same lines, at most three changed", len(before), len(after))
	}
	var changed []string
	for i := range before {
		if before[i] != after[i] && !(strings.HasPrefix(before[i], "//") && strings.HasPrefix(after[i], "//")) {
			changed = append(changed, strconv.Itoa(i+1)+": "+after[i])
		}
	}
	if len(changed) == 0 || len(changed) > 3 {
		t.Errorf("%d code lines changed, want 1 to 3: %q", len(changed), changed)
	}
	doc, err := os.ReadFile("../MIGRATING.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"before.js", "app.js"} {
		code, _ := os.ReadFile("../examples/migrate/" + f)
		if !strings.Contains(string(doc), "```js\n"+string(code)+"```") {
			t.Errorf("MIGRATING.md does not show examples/migrate/%s as it is", f)
		}
	}
	t.Logf("app.js changes %d lines of before.js: %q", len(changed), changed)
}

// TestMigratedAppUnderStickyd runs examples/migrate/app.js exactly, as 4
// stickyd workers, with 200 socket.io clients.
func TestMigratedAppUnderStickyd(t *testing.T) {
	dir := migrateExample(t)
	clientsDir := socketIOExample(t)
	base := testkit.FreePortBase(t, sioWorkers, workerPortsLo, workerPortsHi)
	cfg := writeWorkersConfig(t, base, "node", "app.js")
	addr := testkit.FreePort(t)
	p := launch(t, dir, addr, "--listen", addr, "--log-format", "json", "--config", cfg, "--drain-timeout", "5s",
		"--workers", strconv.Itoa(sioWorkers), "--", "node", "app.js")
	pids := waitWorkersReady(t, p, sioWorkers)
	ips := testkit.ClientIPs(sioClients)
	homes := lookupHomes(t, cfg, sioWorkers, ips)

	for _, ip := range ips[:20] { // plain HTTP through express: the client's own IP
		if slot, pid := helloFrom(t, ip, p.addr); "worker-"+strconv.Itoa(slot) != homes[ip] || pid != pids[slot] {
			t.Errorf("GET from %s answered by worker %d pid %d, its home is %s", ip, slot, pid, homes[ip])
		}
	}
	run := startSIOClients(t, clientsDir, "http://"+p.addr, "sticky", ips, 45*time.Second)
	ready := run.next(t, "ready", 30*time.Second)
	perWorker := checkSticky(t, ready, homes, pids)
	t.Logf("migrated app: %d/%d clients connected, upgraded to websocket and acked by their home worker, told their own IP, in %d ms; clients per worker %v",
		len(ready.Clients), sioClients, ready.Ms, perWorker)
	if m := regexp.MustCompile(`stickyd-worker: (closed a connection|option)[^"]*`).FindString(p.stderr.String()); m != "" {
		t.Errorf("the workers logged %q", m)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("stickyd exit code %d after SIGTERM, want 0", code)
	}
}
