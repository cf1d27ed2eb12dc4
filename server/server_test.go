package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/relay"
)

var local = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

// A client is relayed to its backend, which is told the client's address
// and port in a PROXY v2 header; bytes flow both ways.
func TestServeRelays(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{SendProxy: 2, SniffWait: 10 * time.Millisecond}, newEngine, b)
		c := testkit.Dial(t, "127.0.0.5", r.addr)
		c.Write([]byte("ping\n"))
		name, got, br := testkit.Greeting(t, c)
		if name != "b0" || got.String() != c.LocalAddr().String() {
			t.Errorf("greeting %s %s, want b0 %s", name, got, c.LocalAddr())
		}
		if line, err := br.ReadString('\n'); line != "ping\n" {
			t.Errorf("echo %q, %v", line, err)
		}
		c.CloseWrite()
		if rest, err := io.ReadAll(br); len(rest) != 0 || err != nil {
			t.Errorf("after half-close: %q, %v", rest, err)
		}
		testkit.WaitFor(t, "open count back to 0", func() bool { return r.srv.Open() == 0 })
		if got := r.srv.Metrics().Accepted.Load(); got != 1 {
			t.Errorf("Accepted = %d", got)
		}
	})
}

// Shutdown closes the listener at once, lets an open connection finish, and
// returns nil when it has; Serve returns ErrServerClosed.
func TestShutdownDrains(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{SniffWait: 10 * time.Millisecond}, newEngine, b)
		c := testkit.Dial(t, "127.0.0.6", r.addr)
		_, _, br := testkit.Greeting(t, c)

		r.done = true
		shut := make(chan error, 1)
		go func() { shut <- r.srv.Shutdown(context.Background()) }()
		err := testkit.Await(t, r.served, "Serve still running after Shutdown")
		r.served <- err // for the cleanup's check
		if nc, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
			nc.Close()
			t.Error("listener still accepting during the drain")
		}
		for i := range 3 {
			fmt.Fprintf(c, "msg %d\n", i)
			if line, err := br.ReadString('\n'); line != fmt.Sprintf("msg %d\n", i) {
				t.Fatalf("connection broken during drain: %q, %v", line, err)
			}
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with a connection open", err)
		default:
		}
		c.Close()
		if err := testkit.Await(t, shut, "Shutdown did not return after the last connection ended"); err != nil {
			t.Errorf("Shutdown = %v after the last connection ended", err)
		}
	})
}

// At the end of the drain period Shutdown cuts what is left and reports it.
func TestShutdownTimeoutCuts(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{SniffWait: 10 * time.Millisecond}, newEngine, b)
		c := testkit.Dial(t, "127.0.0.7", r.addr)
		testkit.Greeting(t, c)
		r.done = true
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := r.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if _, err := testkit.ReadAll(t, c); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Errorf("client read after the cut: %v", err)
		}
		if n := r.srv.Open(); n != 0 {
			t.Errorf("Open() = %d after Shutdown", n)
		}
	})
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset by peer") }

// At MaxConnections the accept loop stops accepting (the next client waits
// in the kernel backlog) and resumes when a connection ends.
func TestMaxConnectionsPausesAccept(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{MaxConnections: 2, SniffWait: 10 * time.Millisecond}, newEngine, b)
		first := testkit.Dial(t, "127.0.1.1", r.addr)
		testkit.Greeting(t, first)
		second := testkit.Dial(t, "127.0.1.2", r.addr)
		testkit.Greeting(t, second)

		third := testkit.Dial(t, "127.0.1.3", r.addr) // completes in the backlog
		greeted := make(chan string, 1)
		go func() {
			line, err := bufio.NewReader(third).ReadString('\n')
			if err != nil {
				line = "error: " + err.Error()
			}
			greeted <- line
		}()
		select {
		case line := <-greeted:
			t.Fatalf("third connection served over the cap: %q", line)
		case <-time.After(300 * time.Millisecond):
		}
		if n := r.srv.Open(); n != 2 {
			t.Errorf("Open() = %d at the cap, want 2", n)
		}
		if n := r.srv.Metrics().LimitWaits.Load(); n != 1 {
			t.Errorf("LimitWaits = %d at the cap, want 1 (one pause)", n)
		}
		first.Close()
		if line := testkit.Await(t, greeted, "accepting did not resume after a connection ended"); !strings.HasPrefix(line, "b0 127.0.1.3:") {
			t.Errorf("third connection got %q", line)
		}
	})
}

// A PROXY header from a peer outside Trusted is refused: closed, counted as
// untrusted, logged once, and no backend is told the forged address.
func TestUntrustedHeaderRefused(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{Trusted: local, SniffWait: 50 * time.Millisecond}, newEngine, b)
		headers := map[string][]byte{
			"127.0.2.1": []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
			"127.0.2.2": v2(t, "1.2.3.4:1", "5.6.7.8:2"),
		}
		for ip, hdr := range headers {
			c := testkit.Dial(t, ip, r.addr)
			c.Write(hdr)
			if got, _ := testkit.ReadAll(t, c); got != "" {
				t.Errorf("%s: refused client got %q", ip, got)
			}
			testkit.WaitFor(t, "refusal logged", func() bool { return len(r.refusals(ip)) > 0 })
			if n := len(r.refusals(ip)); n != 1 {
				t.Errorf("%s: %d log lines, want 1", ip, n)
			}
		}
		if n := r.srv.Metrics().HeaderErrors()[HeaderUntrusted]; n != 2 {
			t.Errorf("untrusted count %d, want 2", n)
		}
		for _, h := range b.Headers() {
			if strings.HasPrefix(h.SourceAddr.String(), "1.2.3.4") {
				t.Error("backend was told the forged address")
			}
		}
	})
}

func v2(t *testing.T, src, dst string, tlvs ...pp.TLV) []byte {
	t.Helper()
	h := pp.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	if err := h.SetTLVs(tlvs); err != nil {
		t.Fatal(err)
	}
	raw, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// A trusted upstream's header picks the backend and reaches it; TLVs are
// forwarded only with ForwardTLVs; LOCAL is served by the socket address.
func TestTrustedHeader(t *testing.T) {
	vpce := pp.TLV{Type: 0xEA, Value: append([]byte{0x01}, "vpce-0a1b2c3d4e5f6a7b8"...)}
	pad := pp.TLV{Type: pp.PP2_TYPE_NOOP, Value: make([]byte, 300)}
	for _, forward := range []bool{false, true} {
		t.Run(fmt.Sprintf("forward-tlvs=%v", forward), func(t *testing.T) {
			b := startBackend(t, "b0")
			r := startServer(t, Options{Trusted: local, SendProxy: 2, ForwardTLVs: forward}, nil, b)
			c := testkit.Dial(t, "127.0.0.1", r.addr)
			c.Write(v2(t, "203.0.113.9:4000", "10.0.0.1:443", vpce, pad))
			if _, got, _ := testkit.Greeting(t, c); got.String() != "203.0.113.9:4000" {
				t.Errorf("backend told %s", got)
			}
			tlvs, err := b.Headers()[0].TLVs()
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, tlv := range tlvs {
				found = found || tlv.Type == 0xEA && string(tlv.Value) == string(vpce.Value)
			}
			if found != forward {
				t.Errorf("VPC endpoint TLV forwarded = %v, want %v (%d TLVs)", found, forward, len(tlvs))
			}
		})
	}
}

// Each kind of header failure is counted under its kind and logged once.
func TestHeaderErrorKinds(t *testing.T) {
	httpMode := Options{ClientIPHeader: "X-Forwarded-For", Trusted: local, HeaderTimeout: 200 * time.Millisecond, MaxHeaderBytes: 1024}
	proxyMode := Options{Trusted: local, HeaderTimeout: 200 * time.Millisecond}
	tests := []struct {
		name      string
		opts      Options
		src       string
		send      string
		closeSend bool
		kind      string
		reply     string // start of what the client must receive
	}{
		{"proxy timeout", proxyMode, "127.0.0.1", "PROXY TCP4 1.2", false, HeaderTimeout, ""},
		{"proxy truncated", proxyMode, "127.0.0.1", "PROXY TCP4 1.2", true, HeaderTruncated, ""},
		{"proxy missing", proxyMode, "127.0.0.1", "GET / HTTP/1.1\r\n\r\n", false, HeaderMissing, ""},
		{"proxy v1 too long", proxyMode, "127.0.0.1", "PROXY TCP4 " + strings.Repeat("1", 120), false, HeaderTooLong, ""},
		{"proxy malformed", proxyMode, "127.0.0.1", "PROXY TCP4 1.2.3.999 1.2.3.4 1 2\r\n", false, HeaderMalformed, ""},
		{"proxy untrusted", proxyMode, "127.0.0.2", "PROXY TCP4 1.2.3.4 1.2.3.5 1 2\r\n", false, HeaderUntrusted, ""},
		{"http no address", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, HeaderHTTPNoAddr, "HTTP/1.1 400 Bad Request\r\n"},
		{"http bad address", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nX-Forwarded-For: nope\r\n\r\n", false, HeaderHTTPNoAddr, "HTTP/1.1 400 Bad Request\r\n"},
		{"http too long", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nX-Pad: " + strings.Repeat("x", 2000), false, HeaderTooLong, "HTTP/1.1 400 Bad Request\r\n"},
		{"http timeout", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nHost: x\r\n", false, HeaderTimeout, ""},
		{"http obs-fold", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo: bar\r\n X-Forwarded-For: 6.6.6.6\r\n\r\n", false, HeaderHTTPMalformed, "HTTP/1.1 400 Bad Request\r\n"},
		{"http obs-fold tab", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1,\r\n\t6.6.6.6\r\n\r\n", false, HeaderHTTPMalformed, "HTTP/1.1 400 Bad Request\r\n"},
		{"http space before colon", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nX-Forwarded-For : 6.6.6.6\r\n\r\n", false, HeaderHTTPMalformed, "HTTP/1.1 400 Bad Request\r\n"},
		{"http line without colon", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nX-Forwarded-For 6.6.6.6\r\n\r\n", false, HeaderHTTPMalformed, "HTTP/1.1 400 Bad Request\r\n"},
		{"http bare LF", httpMode, "127.0.0.1", "GET / HTTP/1.1\nHost: x\nX-Forwarded-For: 6.6.6.6\n\n", false, HeaderHTTPMalformed, "HTTP/1.1 400 Bad Request\r\n"},
		{"http bare LF unfinished", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nHost: x\n", false, HeaderHTTPMalformed, "HTTP/1.1 400 Bad Request\r\n"},
		{"http bare CR", httpMode, "127.0.0.1", "GET / HTTP/1.1\r\nX-Foo: a\rX-Forwarded-For: 6.6.6.6\r\n\r\n", false, HeaderHTTPMalformed, "HTTP/1.1 400 Bad Request\r\n"},
		{"http proxy header", httpMode, "127.0.0.1", "PROXY TCP4 1.2.3.4 1.2.3.5 1 2\r\nGET / HTTP/1.1\r\n\r\n", false, HeaderUntrusted, ""},
		// HTTPS to a plain-HTTP port: refused as such, not as a block with
		// a bare LF (curl's ClientHello has one at byte 115) or a timeout.
		{"http TLS handshake", httpMode, "127.0.0.1", tlsClientHello(t), false, HeaderHTTPMalformed, ""},
		// h2c with prior knowledge (gRPC): no address to read, and no 400.
		{"http HTTP/2 preface", httpMode, "127.0.0.1", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false, HeaderHTTPNoAddr, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := startBackend(t, "b0")
			r := startServer(t, tc.opts, nil, b)
			c := testkit.Dial(t, tc.src, r.addr)
			c.Write([]byte(tc.send))
			if tc.closeSend {
				c.CloseWrite()
			}
			got, _ := testkit.ReadAll(t, c)
			if !strings.HasPrefix(got, tc.reply) || tc.reply == "" && got != "" {
				t.Errorf("client got %q, want %q...", got, tc.reply)
			}
			if tc.reply != "" && strings.Count(strings.SplitN(got, "\r\n\r\n", 2)[1], "\n") != 1 {
				t.Errorf("400 body is not one line: %q", got)
			}
			testkit.WaitFor(t, "refusal logged", func() bool { return len(r.refusals(tc.src)) > 0 })
			if n := len(r.refusals(tc.src)); n != 1 {
				t.Errorf("%d log lines, want 1", n)
			}
			for kind, n := range r.srv.Metrics().HeaderErrors() {
				if want := int64(map[bool]int{true: 1}[kind == tc.kind]); n != want {
					t.Errorf("HeaderErrors[%s] = %d, want %d (error: %v)", kind, n, want, r.refusals(tc.src)[0].ContextMap()["error"])
				}
			}
			// A setup that may not match the network says how to fix it.
			fix, _ := r.refusals(tc.src)[0].ContextMap()["fix"].(string)
			switch tc.kind {
			case HeaderMissing:
				if !strings.Contains(fix, "if "+tc.src+" is your load balancer, make it send PROXY headers") {
					t.Errorf("fix %q", fix)
				}
			case HeaderUntrusted:
				if !strings.Contains(fix, "--accept-proxy "+tc.src+"/32") {
					t.Errorf("fix %q", fix)
				}
			case HeaderHTTPNoAddr:
				want := "must set " + tc.opts.ClientIPHeader
				if tc.name == "http HTTP/2 preface" {
					want = "for HTTP/2 or gRPC in cleartext, carry the client address in PROXY headers"
				}
				if !strings.Contains(fix, want) || !strings.Contains(fix, "--ignore-missing-header") {
					t.Errorf("fix %q", fix)
				}
			case HeaderHTTPMalformed:
				if tc.name == "http TLS handshake" && !strings.Contains(fix, "terminate TLS before stickyd") ||
					tc.name != "http TLS handshake" && fix != "" {
					t.Errorf("fix %q", fix)
				}
			default:
				if fix != "" {
					t.Errorf("fix %q for a client's fault", fix)
				}
			}
			if n := len(b.Headers()); n != 0 {
				t.Errorf("backend saw %d connections", n)
			}
		})
	}
}

// A port probe (connect, close) is neither logged nor counted.
func TestPortProbeQuiet(t *testing.T) {
	b := startBackend(t, "b0")
	r := startServer(t, Options{Trusted: local}, nil, b)
	c := testkit.Dial(t, "127.0.0.1", r.addr)
	c.Close()
	testkit.WaitFor(t, "probe finished", func() bool { return r.srv.Open() == 0 })
	if n := r.logs.Len(); n != 0 {
		t.Errorf("%d log lines for a port probe: %v", n, r.logs.All())
	}
	for kind, n := range r.srv.Metrics().HeaderErrors() {
		if n != 0 {
			t.Errorf("HeaderErrors[%s] = %d", kind, n)
		}
	}
}

// A well-formed header block sent in pieces (one piece ending between CR
// and LF) is routed by its header, and the request reaches the backend byte
// for byte: bare CR and LF in the body are the body's business.
func TestHTTPBlockInPiecesRelayed(t *testing.T) {
	b := startBackend(t, "b0")
	r := startServer(t, Options{ClientIPHeader: "X-Forwarded-For", Trusted: local}, nil, b)
	c := testkit.Dial(t, "127.0.0.1", r.addr)
	body := "a\nb\rc\r\n"
	req := "POST / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nContent-Length: 7\r\n\r\n" + body
	cut := strings.Index(req, "\r\nContent") + 1 // after the CR
	for _, piece := range []string{req[:cut], req[cut : cut+5], req[cut+5:]} {
		c.Write([]byte(piece))
		time.Sleep(20 * time.Millisecond) // separate reads on stickyd's side (not a wait for a result)
	}
	c.CloseWrite()
	name, client, br := testkit.Greeting(t, c)
	if name != "b0" || client.Addr().String() != "203.0.113.9" {
		t.Fatalf("routed to %s as %v, want b0 as 203.0.113.9", name, client)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != req {
		t.Errorf("backend got %q, want %q", rest, req)
	}
}

// tlsClientHello is the first record Go's TLS client sends: what a client
// that speaks HTTPS to a plain-HTTP port opens with.
func tlsClientHello(t *testing.T) string {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	go tls.Client(a, &tls.Config{ServerName: "example.com"}).Handshake()
	hello := make([]byte, 4096)
	b.SetReadDeadline(time.Now().Add(testkit.Guard))
	n, err := b.Read(hello)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if !looksLikeTLS(hello[:n]) {
		t.Fatalf("not a TLS record: % x", hello[:min(n, 8)])
	}
	return string(hello[:n])
}
