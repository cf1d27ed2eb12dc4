package integration_test

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

// lowLimit runs stickyd (startStickyd's flags plus args) with an open-file
// limit of n, soft and hard.
func lowLimit(t *testing.T, n string, args ...string) *proc {
	t.Helper()
	addr := testkit.FreePort(t)
	wrap := []string{"sh", "-c", `ulimit -n ` + n + ` && exec "$0" "$@"`}
	return launchVia(t, wrap, t.TempDir(), addr, append([]string{"--listen", addr, "--log-format", "json"}, args...)...)
}

// startSourceBackend serves a PROXY-aware backend that answers each
// connection with one byte, then sends bytes until the connection fails:
// a download that never ends, so each client that stops reading leaves
// stickyd's side of it full, in bulk (splice) mode.
func startSourceBackend(t *testing.T) string {
	t.Helper()
	var tr testkit.Tracked
	tr.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) {
		defer c.Close()
		if _, err := pp.Read(bufio.NewReader(c)); err != nil {
			return
		}
		chunk := make([]byte, 64<<10)
		chunk[0] = 'G'
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
			chunk[0] = 0
		}
	})
	return tr.Addr()
}

// download connects from ip, speaks first (so that stickyd does not wait
// for a silent client) and reads the backend's first byte; the client then
// reads no more.
func download(t *testing.T, ip, addr string) (*net.TCPConn, error) {
	t.Helper()
	c := testkit.Dial(t, ip, addr)
	var b [1]byte
	if _, err := c.Write([]byte("go")); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'G' {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Under a low open-file limit, max_connections downloads stalled in bulk
// transfer (each holding what it can: sockets, and pipes while the budget
// has some) must all be served, the admin API must answer, the backend
// must not be blamed for stickyd's own descriptor shortage, and reaching
// the cap is logged. Before the budget counted pipes, 300 descriptors ran
// out at about 70 of the 86 allowed connections.
func TestDescriptorBudgetUnderLowLimit(t *testing.T) {
	src := startSourceBackend(t)
	adm := testkit.FreePort(t)
	p := lowLimit(t, "300", "--backend", "src="+src, "--admin", adm)
	max := int(opsMetric(t, adm, "stickyd_connections_max"))
	if max < 50 || max > 150 {
		t.Fatalf("connections_max = %d under 300 open files, want 50..150", max)
	}
	var conns []*net.TCPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range max {
		c, err := download(t, testkit.ClientIP(i), p.addr)
		if err != nil {
			t.Fatalf("client %d of %d not served: %v (%d fds in stickyd)", i+1, max, err, p.fdCount(t))
		}
		conns = append(conns, c)
	}
	if code, body := opsDo(t, "GET", adm, "/healthz"); code != 200 {
		t.Errorf("/healthz at the cap: %d %s", code, body)
	}
	if b := opsBackends(t, adm)["src"]; b.DialFailures != 0 || b.State != "up" {
		t.Errorf("backend at the cap: %d dial failures, state %s; want 0, up", b.DialFailures, b.State)
	}
	// One more waits in the backlog; the cap is logged; it is served when
	// a connection ends.
	extra := make(chan error, 1)
	go func() {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			defer c.Close()
			var b [1]byte
			c.Write([]byte("go"))
			_, err = io.ReadFull(c, b[:])
		}
		extra <- err
	}()
	testkit.WaitFor(t, "the cap logged", func() bool { return opsLogged(p, `"msg":"max_connections reached`) })
	conns[0].Close()
	if err := <-extra; err != nil {
		t.Errorf("client over the cap, once a slot freed: %v", err)
	}
	if n := strings.Count(p.stderr.String(), `"msg":"max_connections reached`); n != 1 {
		t.Errorf("cap logged %d times, want once", n)
	}
}

// A max_connections the open-file limit cannot hold is lowered to what it
// can, with one warning that says so, instead of failing clients with
// "no backend available" once descriptors run out.
func TestMaxConnectionsOverLimitLowered(t *testing.T) {
	b := testkit.StartBackend(t, "b0")
	adm := testkit.FreePort(t)
	p := lowLimit(t, "300", "--backend", b.Flag(), "--admin", adm, "--max-connections", "1000")
	max := opsMetric(t, adm, "stickyd_connections_max")
	if max <= 0 || max >= 150 {
		t.Errorf("connections_max = %v with --max-connections 1000 under 300 open files, want it lowered below 150", max)
	}
	if n := strings.Count(p.stderr.String(), "max_connections is more than the open-file limit allows"); n != 1 {
		t.Errorf("warning logged %d times, want once:\n%s", n, p.stderr.String())
	}
	c := testkit.Dial(t, testkit.ClientIP(1), p.addr)
	defer c.Close()
	if name, _, _ := testkit.Greeting(t, c); name != "b0" {
		t.Errorf("served by %q, want b0", name)
	}
}
