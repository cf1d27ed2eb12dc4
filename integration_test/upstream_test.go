package integration_test

// stickyd behind real upstreams (HAProxy and nginx, sending PROXY v1/v2 or
// X-Forwarded-For), behind an AWS NLB (its PROXY v2 format crafted here),
// and in HTTP header mode.

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
	"github.com/stickyd/stickyd/internal/testkit"
)

// requireTool returns the path of an upstream's binary. When it (or one of
// files) is missing the test is skipped, unless CI is set: then it fails.
func requireTool(t *testing.T, name string, files ...string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	for _, f := range files {
		if _, ferr := os.Stat(f); err == nil && ferr != nil {
			err = ferr
		}
	}
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "" {
		t.Skipf("%s not usable (%v); ./test.sh installs it, and with CI set this is a failure", name, err)
	}
	t.Fatalf("%s not usable and CI is set: %v", name, err)
	return ""
}

// upstream is a running HAProxy or nginx, in the foreground, in its own
// process group.
type upstream struct {
	cmd    *exec.Cmd
	out    *testkit.SyncBuffer
	exited chan struct{}
}

// startUpstream runs argv and waits until addr accepts connections. At
// cleanup it sends SIGTERM, then SIGKILL to the process group if the
// process has not exited within the hang guard.
func startUpstream(t *testing.T, addr string, argv ...string) *upstream {
	t.Helper()
	u := &upstream{out: &testkit.SyncBuffer{}, exited: make(chan struct{})}
	u.cmd = exec.Command(argv[0], argv[1:]...)
	u.cmd.Stdout, u.cmd.Stderr = u.out, u.out
	u.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { u.cmd.Wait(); close(u.exited) }()
	pgid := u.cmd.Process.Pid
	t.Cleanup(func() {
		u.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-u.exited:
		case <-time.After(testkit.Guard):
			t.Errorf("%s did not stop on SIGTERM", argv[0])
		}
		syscall.Kill(-pgid, syscall.SIGKILL) // any worker left behind
		<-u.exited
		if t.Failed() {
			t.Logf("%s output:\n%s", argv[0], u.out.String())
		}
	})
	testkit.WaitFor(t, argv[0]+" listening", func() bool {
		select {
		case <-u.exited:
			t.Fatalf("%s exited: %s", argv[0], u.out.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return u
}

// startHAProxy runs HAProxy (mode tcp) in front of target, with server
// option serverOpt (send-proxy or send-proxy-v2). It returns its address.
func startHAProxy(t *testing.T, target, serverOpt string) string {
	t.Helper()
	return startHAProxyListen(t, "", target, serverOpt)
}

// startHAProxyListen runs HAProxy (mode tcp) with one listen section: bind
// options bindOpt, one server target with options serverOpt. It returns
// its address.
func startHAProxyListen(t *testing.T, bindOpt, target, serverOpt string) string {
	t.Helper()
	bin := requireTool(t, "haproxy")
	addr := testkit.FreePort(t)
	cfg := fmt.Sprintf(`global
    maxconn 2000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
listen front
    bind %s %s
    server s %s %s
`, addr, bindOpt, target, serverOpt)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	startUpstream(t, addr, bin, "-db", "-f", path)
	return addr
}

const nginxStream = "/usr/lib/nginx/modules/ngx_stream_module.so"

// startNginx runs nginx (master and one worker, not daemonised) with the
// given top-level block (stream {...} or http {...}; %s is the listen
// address). It returns its address.
func startNginx(t *testing.T, block string) string {
	t.Helper()
	bin := requireTool(t, "nginx", nginxStream)
	dir := t.TempDir()
	addr := testkit.FreePort(t)
	cfg := fmt.Sprintf(`load_module %s;
daemon off;
master_process on;
worker_processes 1;
user root;
pid %s/nginx.pid;
error_log %s/error.log info;
events { worker_connections 1024; }
`, nginxStream, dir, dir) + strings.ReplaceAll(block, "$DIR", dir)
	cfg = strings.ReplaceAll(cfg, "%LISTEN%", addr)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	startUpstream(t, addr, bin, "-p", dir, "-e", dir+"/error.log", "-c", path)
	return addr
}

// startNginxForwardedFor runs nginx as an HTTP proxy in front of target
// that appends the client to X-Forwarded-For. It returns its address.
func startNginxForwardedFor(t *testing.T, target string) string {
	t.Helper()
	return startNginx(t, fmt.Sprintf(`http {
    access_log off;
    client_body_temp_path $DIR/body;
    proxy_temp_path $DIR/proxy;
    fastcgi_temp_path $DIR/fastcgi;
    uwsgi_temp_path $DIR/uwsgi;
    scgi_temp_path $DIR/scgi;
    server {
        listen %%LISTEN%%;
        location / {
            proxy_pass http://%s;
            proxy_http_version 1.1;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
    }
}
`, target))
}

// visit connects from ip to addr and returns the backend's greeting and
// the client's own address.
func visit(ip, addr string) (name string, told, self netip.AddrPort, err error) {
	c, err := testkit.DialFrom(ip, addr)
	if err != nil {
		return "", told, self, err
	}
	defer c.Close()
	self = c.LocalAddr().(*net.TCPAddr).AddrPort()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", told, self, fmt.Errorf("client %s: read greeting: %w (got %q)", ip, err, line)
	}
	name, a, _ := strings.Cut(strings.TrimSpace(line), " ")
	told, err = netip.ParseAddrPort(a)
	return name, told, self, err
}

// checkStickyThrough makes rounds connections from each of clients
// distinct IPs (in parallel) with connect, which returns the backend that
// answered and fails if it was told the wrong client address. Every IP must
// always reach the same backend, and every one of the backends get clients.
// It returns the number of clients per backend.
func checkStickyThrough(t *testing.T, clients, rounds, backends int, connect func(ip string, round int) (string, error)) map[string]int {
	t.Helper()
	home := make([]string, clients)
	testkit.Parallel(t, clients, 32, func(i int) error {
		ip := testkit.ClientIP(i)
		for round := range rounds {
			name, err := connect(ip, round)
			switch {
			case err != nil:
				return err
			case round > 0 && name != home[i]:
				return fmt.Errorf("client %s: round %d reached %s, round 0 %s", ip, round, name, home[i])
			}
			home[i] = name
		}
		return nil
	})
	used := map[string]int{}
	for _, name := range home {
		used[name]++
	}
	if len(used) != backends {
		t.Errorf("clients per backend %v: all %d backends should get clients", used, backends)
	}
	return used
}

// viaProxyHeader connects through addr, an upstream sending PROXY
// headers: the backend must be told the client's address and port.
func viaProxyHeader(addr string) func(ip string, round int) (string, error) {
	return func(ip string, round int) (string, error) {
		name, told, self, err := visit(ip, addr)
		if err == nil && told != self {
			err = fmt.Errorf("client %s: backend was told %s", self, told)
		}
		return name, err
	}
}

// Behind HAProxy (send-proxy and send-proxy-v2): 200 client IPs, two
// connections each, are routed by the address in HAProxy's header.
func TestBehindHAProxy(t *testing.T) {
	for _, opt := range []string{"send-proxy", "send-proxy-v2"} {
		t.Run(opt, func(t *testing.T) {
			requireTool(t, "haproxy")
			_, args := fourBackends(t)
			p := startStickyd(t, append(args, "--accept-proxy", "127.0.0.1/32")...)
			front := startHAProxy(t, p.addr, opt)
			checkStickyThrough(t, 200, 2, 4, viaProxyHeader(front))
		})
	}
}

// Behind nginx stream with proxy_protocol on (PROXY v1).
func TestBehindNginxStream(t *testing.T) {
	requireTool(t, "nginx", nginxStream)
	_, args := fourBackends(t)
	p := startStickyd(t, append(args, "--accept-proxy", "127.0.0.1/32")...)
	front := startNginx(t, fmt.Sprintf(`stream {
    server { listen %%LISTEN%%; proxy_pass %s; proxy_protocol on; }
}
`, p.addr))
	checkStickyThrough(t, 200, 2, 4, viaProxyHeader(front))
}

// Behind nginx as an HTTP proxy that appends the client to
// X-Forwarded-For: the client's own spoofed entries are ignored, the
// address nginx adds is routed on, and HTTP backends are told it.
func TestBehindNginxHTTPForwardedFor(t *testing.T) {
	requireTool(t, "nginx", nginxStream)
	var args []string
	for i := range 4 {
		args = append(args, "--backend", startHTTPBackend(t, fmt.Sprintf("h%d", i)))
	}
	p := startStickyd(t, append(args, "--accept-proxy", "127.0.0.1/32", "--client-ip-header", "X-Forwarded-For")...)
	front := startNginxForwardedFor(t, p.addr)
	checkStickyThrough(t, 200, 2, 4, func(ip string, round int) (string, error) {
		name, told, err := httpVisit(ip, front, fmt.Sprintf("6.6.6.%d", round))
		if err == nil && told.Addr().String() != ip {
			err = fmt.Errorf("client %s: backend was told %s", ip, told)
		}
		return name, err
	})
}

// startHTTPBackend runs a PROXY-aware HTTP server (go-proxyproto's
// Listener, header required) answering "<name> <client addr>". It returns
// the --backend flag value.
func startHTTPBackend(t *testing.T, name string) string {
	t.Helper()
	ln := testkit.Listen(t, "127.0.0.1:0")
	pln := &pp.Listener{
		Listener:          ln,
		ConnPolicy:        func(pp.ConnPolicyOptions) (pp.Policy, error) { return pp.REQUIRE, nil },
		ReadHeaderTimeout: 10 * time.Second,
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s\n", name, r.RemoteAddr)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(pln)
	t.Cleanup(func() { srv.Close() })
	return name + "=" + ln.Addr().String()
}

// httpVisit sends one GET from ip through addr, with a spoofed
// X-Forwarded-For, and returns the backend's name and the client address
// it was told.
func httpVisit(ip, addr, spoof string) (string, netip.AddrPort, error) {
	c, err := testkit.DialFrom(ip, addr)
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: %s\r\nConnection: close\r\n\r\n", spoof)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", netip.AddrPort{}, fmt.Errorf("client %s: %w", ip, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return "", netip.AddrPort{}, fmt.Errorf("client %s: %s %q %v", ip, resp.Status, body, err)
	}
	name, a, _ := strings.Cut(strings.TrimSpace(string(body)), " ")
	told, err := netip.ParseAddrPort(a)
	return name, told, err
}

// nlbTLVs are what an AWS NLB adds to its PROXY v2 header: the VPC
// endpoint id (type 0xEA, subtype 0x01) and NOOP padding, here enough to
// take the header past 256 bytes.
var nlbTLVs = []pp.TLV{
	{Type: tlvparse.PP2_TYPE_AWS, Value: append([]byte{tlvparse.PP2_SUBTYPE_AWS_VPCE_ID}, "vpce-08d2bf15fac5001c9"...)},
	{Type: pp.PP2_TYPE_NOOP, Value: make([]byte, 260)},
}

func nlbHeader(t *testing.T, cmd pp.ProtocolVersionAndCommand, src, dst string) []byte {
	t.Helper()
	h := pp.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	h.Command = cmd
	if err := h.SetTLVs(nlbTLVs); err != nil {
		t.Fatal(err)
	}
	raw, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) <= 256 {
		t.Fatalf("NLB header is %d bytes, want over 256", len(raw))
	}
	return raw
}

// AWS NLB: PROXY v2 with the VPC endpoint TLV and padding, over 256 bytes,
// with the client's first bytes in the same segment. The address in it is
// routed on; its TLVs reach the backend only with --forward-tlvs.
func TestNLBProxyV2TLVs(t *testing.T) {
	for _, forward := range []bool{false, true} {
		t.Run(fmt.Sprintf("forward-tlvs=%v", forward), func(t *testing.T) {
			b := testkit.StartBackend(t, "only")
			args := []string{"--backend", b.Flag(), "--accept-proxy", "127.0.0.1/32"}
			if forward {
				args = append(args, "--forward-tlvs")
			}
			p := startStickyd(t, args...)
			for _, src := range []string{"198.51.100.23:41000", "[2001:db8::23]:41001"} {
				c := testkit.Dial(t, "127.0.0.1", p.addr)
				c.Write(append(nlbHeader(t, pp.PROXY, src, "[::ffff:10.0.1.5]:443"), "first\n"...))
				_, told, br := testkit.Greeting(t, c)
				if told.String() != src {
					t.Errorf("backend told %s, want %s", told, src)
				}
				if line, _ := br.ReadString('\n'); line != "first\n" {
					t.Errorf("bytes after the header: %q", line)
				}
				c.Close()
			}
			hs := b.Headers()
			if len(hs) != 2 {
				t.Fatalf("backend saw %d headers", len(hs))
			}
			for _, h := range hs {
				tlvs, err := h.TLVs()
				if err != nil {
					t.Fatalf("backend's header TLVs: %v", err)
				}
				vpce := tlvparse.FindAWSVPCEndpointID(tlvs)
				if want := map[bool]string{true: "vpce-08d2bf15fac5001c9"}[forward]; vpce != want {
					t.Errorf("backend's VPC endpoint id %q, want %q (%d TLVs)", vpce, want, len(tlvs))
				}
			}
		})
	}
}

// AWS NLB health checks: v2 LOCAL with TLVs and dummy addresses. They are
// served, routed and announced by the socket address, exactly as a client
// at that address would be.
func TestNLBHealthCheckLocal(t *testing.T) {
	_, args := fourBackends(t)
	p := startStickyd(t, append(args, "--accept-proxy", "127.0.0.0/8", "--forward-tlvs")...)
	for i := range 20 {
		ip := testkit.ClientIP(3000 + i)
		c := testkit.Dial(t, ip, p.addr)
		c.Write(nlbHeader(t, pp.LOCAL, "10.9.9.9:1", "10.9.9.10:2"))
		name, told, _ := testkit.Greeting(t, c)
		if told.String() != c.LocalAddr().String() {
			t.Errorf("LOCAL from %s: backend told %s", c.LocalAddr(), told)
		}
		c.Close()
		// A real client at that address, announced by the upstream.
		c = testkit.Dial(t, "127.0.0.1", p.addr)
		pp.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP(ip), Port: 9}, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 80}).WriteTo(c)
		if want, _, _ := testkit.Greeting(t, c); want != name {
			t.Errorf("LOCAL from %s went to %s; a client at that address goes to %s", ip, name, want)
		}
		c.Close()
	}
}

// headerModeStickyd starts stickyd in HTTP header mode in front of one echo
// backend.
func headerModeStickyd(t *testing.T, extra ...string) (*proc, *testkit.Backend) {
	t.Helper()
	b := testkit.StartBackend(t, "only")
	return startStickyd(t, append([]string{"--backend", b.Flag()}, extra...)...), b
}

// sendRequest writes req from src and returns what the backend was told
// and the echo of exactly len(req) bytes.
func sendRequest(t *testing.T, src, addr, req string) (netip.AddrPort, string) {
	t.Helper()
	c := testkit.Dial(t, src, addr)
	defer c.Close()
	c.Write([]byte(req))
	_, told, br := testkit.Greeting(t, c)
	echo := make([]byte, len(req))
	if _, err := io.ReadFull(br, echo); err != nil {
		t.Fatalf("echo: %v (got %q)", err, echo)
	}
	return told, string(echo)
}

// Header mode: the client address is taken from the configured header,
// per the trusted hops; the request reaches the backend byte for byte.
func TestHeaderModeRouting(t *testing.T) {
	get := func(headers ...string) string {
		return "GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: app\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n"
	}
	tests := []struct {
		name  string
		flags []string
		src   string
		req   string
		want  string // address the backend is told, "" for the socket's
	}{
		{"xff right-most, nearest proxy trusted", []string{"--client-ip-header", "X-Forwarded-For"}, "127.0.0.1",
			get("X-Forwarded-For: 6.6.6.6, 203.0.113.9"), "203.0.113.9"},
		{"xff spoofed garbage on the left", []string{"--client-ip-header", "X-Forwarded-For"}, "127.0.0.1",
			get("X-Forwarded-For: unknown, <junk>, 6.6.6.6, 203.0.113.9"), "203.0.113.9"},
		{"xff over several lines", []string{"--client-ip-header", "x-forwarded-for"}, "127.0.0.1",
			get("X-Forwarded-For: 6.6.6.6", "Accept: */*", "X-Forwarded-For: 203.0.113.9"), "203.0.113.9"},
		{"xff trusted hops skipped", []string{"--client-ip-header", "X-Forwarded-For", "--accept-proxy", "127.0.0.1/32", "--accept-proxy", "10.0.0.0/8"}, "127.0.0.1",
			get("X-Forwarded-For: 6.6.6.6, 203.0.113.9, 10.1.2.3, 10.0.0.7"), "203.0.113.9"},
		{"xff from an untrusted peer ignored", []string{"--client-ip-header", "X-Forwarded-For", "--accept-proxy", "127.0.0.1/32"}, "127.0.9.9",
			get("X-Forwarded-For: 203.0.113.9"), ""},
		{"x-real-ip", []string{"--client-ip-header", "X-Real-IP"}, "127.0.0.1",
			get("X-Real-IP: 203.0.113.10"), "203.0.113.10"},
		{"forwarded ipv6 with port", []string{"--client-ip-header", "Forwarded"}, "127.0.0.1",
			get(`Forwarded: for="[2001:db8::1]:4711";proto=https`), "2001:db8::1"},
		{"ipv4-mapped", []string{"--client-ip-header", "X-Forwarded-For"}, "127.0.0.1",
			get("X-Forwarded-For: ::ffff:198.51.100.7"), "198.51.100.7"},
		{"missing header with --ignore-missing-header", []string{"--client-ip-header", "X-Forwarded-For", "--ignore-missing-header"}, "127.0.0.3",
			get("Accept: */*"), ""},
		{"h2c preface with --ignore-missing-header", []string{"--client-ip-header", "X-Forwarded-For", "--ignore-missing-header"}, "127.0.0.3",
			"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := headerModeStickyd(t, tc.flags...)
			told, echo := sendRequest(t, tc.src, p.addr, tc.req)
			if tc.want == "" {
				if told.Addr().String() != tc.src {
					t.Errorf("backend told %s, want the socket address %s", told, tc.src)
				}
			} else if told.Addr().String() != tc.want {
				t.Errorf("backend told %s, want %s", told, tc.want)
			}
			if echo != tc.req {
				t.Errorf("request altered on the way:\n got %q\nwant %q", echo, tc.req)
			}
		})
	}
}

// An IPv4-mapped address in the header and its plain form are one client.
func TestHeaderModeMappedIsSticky(t *testing.T) {
	_, args := fourBackends(t)
	p := startStickyd(t, append(args, "--client-ip-header", "X-Forwarded-For")...)
	for i := range 20 {
		ip := fmt.Sprintf("198.51.100.%d", i+1)
		var names []string
		for _, form := range []string{ip, "::ffff:" + ip} {
			c := testkit.Dial(t, "127.0.0.1", p.addr)
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nX-Forwarded-For: %s\r\n\r\n", form)
			name, _, _ := testkit.Greeting(t, c)
			names = append(names, name)
			c.Close()
		}
		if names[0] != names[1] {
			t.Errorf("%s went to %s, its mapped form to %s", ip, names[0], names[1])
		}
	}
}

// A 1 MB POST (the seed module hung on bodies over ~60 KB) is forwarded
// byte for byte, header block untouched, while the echo flows back.
func TestHeaderModeLargeBody(t *testing.T) {
	p, _ := headerModeStickyd(t, "--client-ip-header", "X-Forwarded-For")
	body := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{7}).Read(body)
	req := append([]byte(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 203.0.113.44\r\nContent-Length: %d\r\n\r\n", len(body))), body...)
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	sent := make(chan error, 1)
	go func() {
		_, err := c.Write(req)
		sent <- err
	}()
	_, told, br := testkit.Greeting(t, c)
	if told.Addr().String() != "203.0.113.44" {
		t.Errorf("backend told %s", told)
	}
	echo := make([]byte, len(req))
	if _, err := io.ReadFull(br, echo); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(echo) != sha256.Sum256(req) {
		n := 0
		for n < len(req) && echo[n] == req[n] {
			n++
		}
		t.Errorf("1 MB request altered from byte %d on", n)
	}
}

// readReply reads what stickyd answers until it closes the connection.
func readReply(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testkit.Guard))
	got, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("not closed within %v; got %q", testkit.Guard, got)
	}
	return string(got)
}

// check400 checks an answer is a 400 whose body is one line containing
// reason.
func check400(t *testing.T, got, reason string) {
	t.Helper()
	head, body, _ := strings.Cut(got, "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.1 400 Bad Request\r\n") || !strings.Contains(head, "Connection: close") {
		t.Errorf("answer %q, want a 400 with Connection: close", got)
	}
	if strings.Count(body, "\n") != 1 || !strings.HasSuffix(body, "\n") || !strings.Contains(body, reason) {
		t.Errorf("400 body %q, want one line with %q", body, reason)
	}
}

// A request without the header gets 400 with its reason and is closed,
// even while it is still sending a body; no backend sees it.
func TestHeaderModeMissingHeader400(t *testing.T) {
	p, b := headerModeStickyd(t, "--client-ip-header", "X-Forwarded-For")
	for _, body := range []int{0, 1 << 20} {
		c := testkit.Dial(t, "127.0.0.1", p.addr)
		go func() {
			fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n", body)
			c.Write(make([]byte, body))
		}()
		check400(t, readReply(t, c), "no X-Forwarded-For header")
		c.Close()
	}
	if n := len(b.Headers()); n != 0 {
		t.Errorf("backend saw %d connections", n)
	}
	testkit.WaitFor(t, "two log lines", func() bool { return strings.Count(p.stderr.String(), "no X-Forwarded-For header") == 2 })
}

// A header block over the limit gets 400; one that never ends is closed at
// the header timeout.
func TestHeaderModeOversizedAndEndless(t *testing.T) {
	p, b := headerModeStickyd(t, "--client-ip-header", "X-Forwarded-For", "--proxy-header-timeout", "500ms")
	big := testkit.Dial(t, "127.0.0.1", p.addr)
	go func() {
		big.Write([]byte("GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9\r\n"))
		for range 400 {
			if _, err := big.Write([]byte("X-Pad: " + strings.Repeat("p", 90) + "\r\n")); err != nil {
				return
			}
		}
	}()
	check400(t, readReply(t, big), "request header block over 16384 bytes")
	big.Close()

	c := testkit.Dial(t, "127.0.0.1", p.addr)
	c.Write([]byte("GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9\r\n"))
	start := time.Now()
	if got := readReply(t, c); got != "" {
		t.Errorf("endless header block answered %q", got)
	}
	if d := time.Since(start); d < 400*time.Millisecond || d > testkit.Guard/2 {
		t.Errorf("endless header block closed after %v, want about 500ms", d)
	}
	c.Close()
	if n := len(b.Headers()); n != 0 {
		t.Errorf("backend saw %d connections", n)
	}
}
