package integration_test

// max_connections_per_client behind a real HAProxy: the limit counts the
// clients HAProxy's PROXY headers name, not HAProxy, and a reload changes
// it.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/internal/testkit"
)

func TestMaxConnectionsPerClientBehindHAProxy(t *testing.T) {
	requireTool(t, "haproxy")
	const clients, limit = 40, 3
	b0, b1 := testkit.StartBackend(t, "b0"), testkit.StartBackend(t, "b1")
	adm := testkit.FreePort(t)
	path := filepath.Join(t.TempDir(), "stickyd.toml")
	write := func(perClient int) {
		t.Helper()
		cfg := fmt.Sprintf("admin = %q\naccept_proxy = [\"127.0.0.1/32\"]\nmax_connections_per_client = %d\n", adm, perClient)
		for _, b := range []*testkit.Backend{b0, b1} {
			cfg += fmt.Sprintf("[[backend]]\nname = %q\naddress = %q\n", b.Name, b.Addr())
		}
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(limit)
	p := startStickyd(t, "--config", path)
	front := startHAProxy(t, p.addr, "send-proxy-v2")

	// Each client holds limit connections through HAProxy: all relayed,
	// each backend told the client's own address.
	var mu sync.Mutex
	var held []net.Conn
	testkit.Parallel(t, clients, 16, func(i int) error {
		ip := testkit.ClientIP(i)
		for range limit {
			c, err := testkit.DialFrom(ip, front)
			if err != nil {
				return err
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return fmt.Errorf("client %s: %v (got %q)", ip, err, line)
			}
			if _, told, _ := strings.Cut(strings.TrimSpace(line), " "); told != c.LocalAddr().String() {
				return fmt.Errorf("client %s: backend told %s", c.LocalAddr(), told)
			}
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})

	// One more each: HAProxy accepts it, stickyd refuses it before a
	// backend hears of it, and HAProxy closes it.
	before := len(b0.Headers()) + len(b1.Headers())
	testkit.Parallel(t, clients, 16, func(i int) error {
		c, err := testkit.DialFrom(testkit.ClientIP(i), front)
		if err != nil {
			return err
		}
		defer c.Close()
		if line, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			return fmt.Errorf("client %s over its limit was relayed: %q", testkit.ClientIP(i), line)
		}
		return nil
	})
	if n := len(b0.Headers()) + len(b1.Headers()) - before; n != 0 {
		t.Errorf("the backends saw %d connections of clients over their limit", n)
	}
	if n := opsMetric(t, adm, `stickyd_connections_rejected_total{reason="client_limit"}`); n != clients {
		t.Errorf("client_limit rejections = %v, want %d", n, clients)
	}
	if n := opsMetric(t, adm, "stickyd_clients"); n != clients {
		t.Errorf("stickyd_clients = %v, want %d", n, clients)
	}
	if n := opsMetric(t, adm, "stickyd_connections_per_client_max"); n != limit {
		t.Errorf("stickyd_connections_per_client_max = %v, want %d", n, limit)
	}
	_, body := opsDo(t, "GET", adm, "/clients?top=2")
	var top admin.ClientsResult
	if err := json.Unmarshal([]byte(body), &top); err != nil || top.Limit != limit || top.Clients != clients ||
		len(top.Top) != 2 || top.Top[0].Open != limit || top.Top[1].Open != limit {
		t.Errorf("GET /clients?top=2: %s (%v)", body, err)
	}
	refusals := logsOf[map[string]any](p, "connection refused")
	if len(refusals) == 0 || refusals[0]["cause"] != "client_limit" || !strings.Contains(fmt.Sprint(refusals[0]["fix"]), "max_connections_per_client") {
		t.Errorf("refusals logged as %v", refusals)
	}

	// Another client still gets in, and a reload lifts the limit (live:
	// no "need a restart" line).
	if name, _, _, err := visit(testkit.ClientIP(clients), front); err != nil || name == "" {
		t.Errorf("a new client: %q %v", name, err)
	}
	write(0)
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.WaitFor(t, "config reloaded", func() bool { return opsLogged(p, `"msg":"config reloaded"`) })
	if opsLogged(p, "need a restart") {
		t.Error("max_connections_per_client was logged as needing a restart")
	}
	if name, _, _, err := visit(testkit.ClientIP(0), front); err != nil || name == "" {
		t.Errorf("client 0 after the limit was lifted: %q %v", name, err)
	}
	if n := opsMetric(t, adm, "stickyd_connections_per_client_max"); n != 0 {
		t.Errorf("stickyd_connections_per_client_max = %v after the reload, want 0", n)
	}
}

// max_connection_rate_per_client behind a real HAProxy: a client that
// connects in a loop is refused once it has opened the rate in a second,
// counted by the address in HAProxy's PROXY header, while another client
// gets in.
func TestMaxConnectionRatePerClientBehindHAProxy(t *testing.T) {
	requireTool(t, "haproxy")
	const rate = 10
	b := testkit.StartBackend(t, "b0")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", b.Flag(), "--accept-proxy", "127.0.0.1/32", "--admin", adm,
		"--max-connection-rate-per-client", fmt.Sprint(rate))
	front := startHAProxy(t, p.addr, "send-proxy-v2")
	admitted, refused := 0, 0
	for range 2 * rate { // one after another, each closed at once
		if name, _, _, err := visit("127.0.5.1", front); err == nil && name == "b0" {
			admitted++
		} else {
			refused++
		}
	}
	// A burst shorter than the second is counted whole; one that takes
	// longer on a busy machine sees the previous second's share decay.
	if admitted < rate || admitted > rate+2 {
		t.Errorf("%d of %d connections in a burst admitted under a rate of %d/s", admitted, 2*rate, rate)
	}
	if name, _, _, err := visit("127.0.5.2", front); err != nil || name != "b0" {
		t.Errorf("another client: %q %v", name, err)
	}
	if n := opsMetric(t, adm, `stickyd_connections_rejected_total{reason="client_rate"}`); int(n) != refused {
		t.Errorf("client_rate rejections = %v, want %d", n, refused)
	}
	if n := opsMetric(t, adm, "stickyd_connection_rate_per_client_max"); n != rate {
		t.Errorf("stickyd_connection_rate_per_client_max = %v, want %d", n, rate)
	}
	if !opsLogged(p, `"cause":"client_rate"`) {
		t.Error("no refusal logged with cause client_rate")
	}
}

// In HTTP header mode behind a real nginx (X-Forwarded-For), the client
// over its rate gets stickyd's 429, which nginx passes on to it, while
// another client behind the same nginx is served.
func TestClientRate429ThroughNginx(t *testing.T) {
	requireTool(t, "nginx", nginxStream)
	const rate = 3
	p := startStickyd(t, "--backend", startHTTPBackend(t, "h0"), "--accept-proxy", "127.0.0.1/32",
		"--client-ip-header", "X-Forwarded-For", "--max-connection-rate-per-client", fmt.Sprint(rate))
	front := startNginxForwardedFor(t, p.addr)
	get := func(ip string) (int, string) {
		c, err := testkit.DialFrom(ip, front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("client %s: %v", ip, err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	codes := map[int]int{}
	var refusal string
	for range 2 * rate { // nginx opens a connection to stickyd per request
		code, body := get("127.0.7.1")
		codes[code]++
		if code == http.StatusTooManyRequests {
			refusal = body
		}
	}
	if codes[200] < rate || codes[429] < rate-1 || codes[200]+codes[429] != 2*rate {
		t.Errorf("status codes %v for %d requests under a rate of %d/s, want %d or a few more 200s, the rest 429", codes, 2*rate, rate, rate)
	}
	if !strings.Contains(refusal, "too many connections from 127.0.7.1") {
		t.Errorf("the 429's body %q does not name the client", refusal)
	}
	if code, body := get("127.0.7.2"); code != 200 || !strings.HasPrefix(body, "h0 127.0.7.2:") {
		t.Errorf("another client behind the same nginx: %d %q", code, body)
	}
}
