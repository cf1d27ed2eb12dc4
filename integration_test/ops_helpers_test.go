package integration_test

// Helpers of the operations tests (health, admin, reload, dns, replicas,
// upgrade, env, deploy): the admin API client, backend state and metric
// readers. Operations helpers are prefixed "ops" so that they never clash
// with the other files of the package.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/internal/testkit"
)

// opsBackendAt starts a testkit.Backend (greeting, then echo) listening on addr.
func opsBackendAt(t *testing.T, name, addr string) *testkit.Backend {
	t.Helper()
	return testkit.ServeBackend(t, name, testkit.Listen(t, addr))
}

var opsHTTP = &http.Client{Timeout: testkit.Guard}

// opsDo calls the admin API at adm and returns the status and body.
func opsDo(t *testing.T, method, adm, path string) (int, string) {
	t.Helper()
	return adminCall(t, opsHTTP, method, "http://"+adm+path, "", "")
}

// opsBackends returns GET /backends by name.
func opsBackends(t *testing.T, adm string) map[string]admin.BackendInfo {
	t.Helper()
	code, body := opsDo(t, "GET", adm, "/backends")
	if code != 200 {
		t.Fatalf("/backends: %d %s", code, body)
	}
	var list []admin.BackendInfo
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("/backends: %v in %s", err, body)
	}
	out := make(map[string]admin.BackendInfo, len(list))
	for _, b := range list {
		out[b.Name] = b
	}
	return out
}

func opsNames(m map[string]admin.BackendInfo) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func opsWaitState(t *testing.T, adm, name, state string) {
	t.Helper()
	testkit.WaitFor(t, name+" "+state, func() bool { return opsBackends(t, adm)[name].State == state })
}

// opsLookup returns GET /lookup?ip=.
func opsLookup(t *testing.T, adm, ip string) admin.LookupResult {
	t.Helper()
	_, body := opsDo(t, "GET", adm, "/lookup?ip="+ip)
	var r admin.LookupResult
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/lookup: %v in %s", err, body)
	}
	return r
}

// opsHomeIP returns the first client IP (from index from on) whose home
// backend is name.
func opsHomeIP(t *testing.T, adm, name string, from int) string {
	t.Helper()
	for i := from; i < from+500; i++ {
		if opsLookup(t, adm, testkit.ClientIP(i)).Home == name {
			return testkit.ClientIP(i)
		}
	}
	t.Fatalf("no client IP has home %s", name)
	return ""
}

// opsEcho checks that a relayed connection still carries bytes both ways.
func opsEcho(t *testing.T, c net.Conn, br *bufio.Reader, msg string) {
	t.Helper()
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != msg+"\n" {
		t.Fatalf("echo of %q: %q %v", msg, line, err)
	}
}

// opsMetric returns the value of one sample line of /metrics, or -1.
func opsMetric(t *testing.T, adm, series string) float64 {
	t.Helper()
	_, body := opsDo(t, "GET", adm, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

func opsLogged(p *proc, snippet string) bool { return strings.Contains(p.stderr.String(), snippet) }
