package hello

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startServe runs serve on a fresh loopback listener as worker "7" and
// returns its address; the server is stopped (and checked) at cleanup.
func startServe(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, "7", zaptest.NewLogger(t)) }()
	t.Cleanup(func() {
		cancel()
		if err := testkit.Await(t, done, "serve did not return after cancel"); err != nil {
			t.Errorf("serve = %v", err)
		}
	})
	return ln.Addr().String()
}

// client is one connection that has sent its PROXY header.
type client struct {
	net.Conn
	br *bufio.Reader
}

func dialWithHeader(t *testing.T, network, addr string, h *pp.Header) *client {
	t.Helper()
	c := testkit.DialHeader(t, network, addr, h)
	return &client{Conn: c, br: bufio.NewReader(c)}
}

// get sends one keep-alive GET and returns the body.
func (c *client) get(t *testing.T) string {
	t.Helper()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: worker\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("response %d close=%v body %q err %v", resp.StatusCode, resp.Close, body, err)
	}
	return string(body)
}

func proxyHeader(version byte, src, dst string) *pp.Header {
	return pp.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
}

func want(client string) string {
	return fmt.Sprintf("worker 7 (pid %d) says hello to %s\n", os.Getpid(), client)
}

func TestHelloProxyHeaders(t *testing.T) {
	addr := startServe(t)
	for _, tc := range []struct {
		name   string
		header *pp.Header
		client string
	}{
		{"v2 IPv4", proxyHeader(2, "203.0.113.7:40000", "192.0.2.1:3000"), "203.0.113.7"},
		{"v1 IPv4", proxyHeader(1, "198.51.100.9:40000", "192.0.2.1:3000"), "198.51.100.9"},
		{"v2 IPv6", proxyHeader(2, "[2001:db8::7]:40000", "[2001:db8::1]:3000"), "2001:db8::7"},
		{"v1 IPv6", proxyHeader(1, "[2001:db8::8]:40000", "[2001:db8::1]:3000"), "2001:db8::8"},
		{"v2 LOCAL (health check)", &pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}, "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialWithHeader(t, "tcp", addr, tc.header)
			for range 2 { // keep-alive: both requests on one connection
				if got := c.get(t); got != want(tc.client) {
					t.Errorf("body = %q, want %q", got, want(tc.client))
				}
			}
		})
	}
}

func TestHelloRequiresProxyHeader(t *testing.T) {
	addr := startServe(t)
	c := dialWithHeader(t, "tcp", addr, nil)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: worker\r\n\r\n")
	if resp, err := http.ReadResponse(c.br, nil); err == nil {
		resp.Body.Close()
		t.Fatalf("served %d without a PROXY header", resp.StatusCode)
	}
	// The listener survives the bad client.
	c2 := dialWithHeader(t, "tcp", addr, proxyHeader(2, "203.0.113.7:40000", "192.0.2.1:3000"))
	if got := c2.get(t); got != want("203.0.113.7") {
		t.Errorf("body = %q", got)
	}
}

func TestHelloPolicy(t *testing.T) {
	for _, tc := range []struct {
		peer net.Addr
		ok   bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 1}, true},
		{&net.UnixAddr{Name: "@", Net: "unix"}, true},
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}, false},
	} {
		p, err := requireFromLocal(pp.ConnPolicyOptions{Upstream: tc.peer})
		if tc.ok && (p != pp.REQUIRE || err != nil) {
			t.Errorf("%v: policy %v, %v; want REQUIRE", tc.peer, p, err)
		}
		if !tc.ok && !errors.Is(err, pp.ErrInvalidUpstream) {
			t.Errorf("%v: policy %v, %v; want ErrInvalidUpstream", tc.peer, p, err)
		}
	}
}

func TestHelloServeUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "worker-3.sock")
	t.Setenv("SOCKET", path)
	t.Setenv("PORT", "")
	t.Setenv("STICKYD_WORKER_ID", "3")
	// A stale socket file from a dead worker is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, zaptest.NewLogger(t)) }()
	deadline := time.Now().Add(testkit.Guard)
	for c, err := net.Dial("unix", path); ; c, err = net.Dial("unix", path) {
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket never accepted: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	pid := os.Getpid()
	c := dialWithHeader(t, "unix", path, proxyHeader(2, "203.0.113.7:40000", "192.0.2.1:3000"))
	if got, want := c.get(t), fmt.Sprintf("worker 3 (pid %d) says hello to 203.0.113.7\n", pid); got != want {
		t.Errorf("body = %q, want %q", got, want)
	}
	local := dialWithHeader(t, "unix", path, &pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC})
	if got, want := local.get(t), fmt.Sprintf("worker 3 (pid %d) says hello to %s\n", pid, path); got != want {
		t.Errorf("LOCAL body = %q, want %q", got, want)
	}

	cancel() // with c still open and idle: Shutdown closes it
	if err := testkit.Await(t, done, "Serve did not return after cancel"); err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("socket file left behind")
	}
}

func TestHelloServeNeedsAddress(t *testing.T) {
	t.Setenv("SOCKET", "")
	t.Setenv("PORT", "")
	if err := Serve(context.Background(), zaptest.NewLogger(t)); !errors.Is(err, ErrNoAddress) {
		t.Errorf("Serve = %v, want ErrNoAddress", err)
	}
}

func TestHelloClientOfFallbacks(t *testing.T) {
	r := &http.Request{RemoteAddr: "127.0.0.1:5555"}
	if got := clientOf(r.WithContext(context.Background())); got != "127.0.0.1" {
		t.Errorf("clientOf = %q", got)
	}
	if got := clientOf((&http.Request{RemoteAddr: "weird"}).WithContext(context.Background())); !strings.Contains(got, "weird") {
		t.Errorf("clientOf = %q", got)
	}
}
