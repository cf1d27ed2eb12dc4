package integration_test

// The admin API's access control (issue 11 item 5): a Unix socket with
// file permissions, a bearer token for drain and enable, a Host check on
// loopback binds, and bounded error bodies.

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// adminCall makes one request through client (to base) with optional Host
// and bearer token; it returns the status and body.
func adminCall(t *testing.T, client *http.Client, method, url, host, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return testkit.HTTPDo(t, client, req)
}

// unixClient is an HTTP client whose every connection goes to path.
func unixClient(path string) *http.Client {
	return &http.Client{Timeout: testkit.Guard, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}
}

// TestAdminUnixSocketAndToken: a Unix-socket admin API with mode 0600 (or
// the configured one) whose drain needs the token from the file; reads do
// not.
func TestAdminUnixSocketAndToken(t *testing.T) {
	b := testkit.StartBackend(t, "b1")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600)
	sock := filepath.Join(dir, "admin.sock")
	startStickyd(t, "--backend", b.Flag(), "--admin", "unix:"+sock, "--admin-token-file", tokenFile)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode %v, want a socket with 0600", fi.Mode())
	}
	c := unixClient(sock)
	if code, body := adminCall(t, c, "GET", "http://stickyd/backends", "", ""); code != 200 || !strings.Contains(body, `"b1"`) {
		t.Errorf("GET /backends without a token: %d %s", code, body)
	}
	for _, token := range []string{"", "wrong"} {
		if code, body := adminCall(t, c, "POST", "http://stickyd/backends/b1/drain", "", token); code != 401 {
			t.Errorf("drain with token %q: %d %s, want 401", token, code, body)
		}
	}
	if code, body := adminCall(t, c, "GET", "http://stickyd/backends", "", ""); !strings.Contains(body, `"state": "up"`) {
		t.Errorf("b1 no longer up after refused drains: %d %s", code, body)
	}
	if code, body := adminCall(t, c, "POST", "http://stickyd/backends/b1/drain", "", "s3cret-token"); code != 200 || !strings.Contains(body, `"draining"`) {
		t.Errorf("drain with the token: %d %s", code, body)
	}

	sock2 := filepath.Join(dir, "admin2.sock")
	t.Setenv("STICKYD_ADMIN_TOKEN", "env-token")
	startStickyd(t, "--backend", b.Flag(), "--admin", "unix:"+sock2, "--admin-socket-mode", "0660")
	if fi, err := os.Stat(sock2); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("admin socket with --admin-socket-mode 0660: %v %v", fi.Mode(), err)
	}
	c2 := unixClient(sock2)
	if code, _ := adminCall(t, c2, "POST", "http://stickyd/backends/b1/drain", "", ""); code != 401 {
		t.Errorf("drain without the token from STICKYD_ADMIN_TOKEN: %d", code)
	}
	if code, _ := adminCall(t, c2, "POST", "http://stickyd/backends/b1/drain", "", "env-token"); code != 200 {
		t.Errorf("drain with the token from STICKYD_ADMIN_TOKEN: %d", code)
	}
}

// TestAdminLoopbackHostAndBoundedErrors: on a loopback bind a request for
// another Host (DNS rebinding) is refused, and no error body echoes a
// large request.
func TestAdminLoopbackHostAndBoundedErrors(t *testing.T) {
	b := testkit.StartBackend(t, "b1")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", b.Flag(), "--admin", adm)
	c := &http.Client{Timeout: testkit.Guard}
	base := "http://" + adm
	for _, m := range []string{"GET", "POST"} {
		path := map[string]string{"GET": "/backends", "POST": "/backends/b1/drain"}[m]
		if code, body := adminCall(t, c, m, base+path, "evil.example", ""); code != 403 {
			t.Errorf("%s %s with Host evil.example: %d %s, want 403", m, path, code, body)
		}
		if code, body := adminCall(t, c, m, base+path, "evil.example:"+strings.Split(adm, ":")[1], ""); code != 403 {
			t.Errorf("%s %s with Host evil.example:port: %d %s, want 403", m, path, code, body)
		}
	}
	for _, host := range []string{"localhost", "localhost:9000", "127.0.0.1", adm, "[::1]:9000"} {
		if code, body := adminCall(t, c, "GET", base+"/healthz", host, ""); code != 200 {
			t.Errorf("Host %s: %d %s", host, code, body)
		}
	}
	if !strings.Contains(p.stderr.String(), `"cause":"bad_host"`) {
		t.Error("refused request not logged with its cause")
	}
	big := strings.Repeat("A", 100<<10)
	if code, body := adminCall(t, c, "GET", base+"/lookup?ip="+big, "", ""); code == 200 || len(body) > 512 {
		t.Errorf("/lookup with a 100 KB query: %d and a %d-byte body", code, len(body))
	}
	mid := strings.Repeat("B", 4000)
	if code, body := adminCall(t, c, "GET", base+"/lookup?ip="+mid, "", ""); code != 400 || len(body) > 512 {
		t.Errorf("/lookup with a 4 KB query: %d and a %d-byte body", code, len(body))
	}
	if code, body := adminCall(t, c, "POST", base+"/backends/"+mid+"/drain", "", ""); code != 404 || len(body) > 512 {
		t.Errorf("drain of a 4 KB name: %d and a %d-byte body", code, len(body))
	}
	if strings.Contains(p.stderr.String(), "listens beyond loopback") {
		t.Error("a loopback admin listener was warned about")
	}
}

// TestAdminUnixSocketInUseAndStale: a second stickyd on the same admin
// socket fails at start with a clear error; the socket file a killed
// process leaves behind is replaced.
func TestAdminUnixSocketInUseAndStale(t *testing.T) {
	b := testkit.StartBackend(t, "b1")
	sock := filepath.Join(t.TempDir(), "admin.sock")
	p := startStickyd(t, "--backend", b.Flag(), "--admin", "unix:"+sock)
	code, _, stderr := runStickyd(t, t.TempDir(), nil, "", "--listen", testkit.FreePort(t), "--backend", b.Flag(), "--admin", "unix:"+sock)
	if code != 1 || !strings.Contains(stderr, "another process serves on this socket") {
		t.Errorf("second stickyd on a live admin socket: exit %d, %s", code, stderr)
	}
	p.stop(t, 9) // SIGKILL: the socket file stays
	startStickyd(t, "--backend", b.Flag(), "--admin", "unix:"+sock)
	if code, _ := adminCall(t, unixClient(sock), "GET", "http://stickyd/healthz", "", ""); code != 200 {
		t.Errorf("/healthz on the replaced socket: %d", code)
	}
}
