package integration_test

// The hostile-input battery: malformed and lying PROXY headers, slow and
// endless headers, forged headers, garbage, resets on either side, HTTP
// header blocks that never end or are too big, and 9000 connections
// dropped at once. Each case is closed with exactly one log line naming
// what happened; after the battery stickyd still serves and holds no more
// descriptors than before.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

// hostile is the battery's state: two stickyd (PROXY mode, trusting
// 127.1.0.0/16; HTTP header mode), a backend that can reset on request,
// and the client IP each case used.
type hostile struct {
	proxy, http *proc
	backend     *resetBackend
	next        int
	used        map[string]string // client IP -> case name
}

// ip returns a fresh client IP: trusted (127.1.x.y) or not (127.2.x.y).
func (h *hostile) ip(trusted bool, name string) string {
	h.next++
	ip := fmt.Sprintf("127.%d.%d.%d", map[bool]int{true: 1, false: 2}[trusted], h.next/250, 1+h.next%250)
	h.used[ip] = name
	return ip
}

// logLines returns p's JSON log lines about connections from ip.
func logLines(t *testing.T, p *proc, ip string) []map[string]any {
	t.Helper()
	return logsByIP(p)[ip]
}

// logsByIP returns p's JSON log lines that name a peer, by the peer's IP.
// Each line gets "raw" (the line) and "text": its message, then its error,
// end and via fields as key=value.
func logsByIP(p *proc) map[string][]map[string]any {
	out := map[string][]map[string]any{}
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if !strings.Contains(line, `"peer":`) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		peer, _ := m["peer"].(string)
		ap, err := netip.ParseAddrPort(peer)
		if err != nil {
			continue
		}
		text := fmt.Sprint(m["msg"])
		for _, k := range []string{"error", "end", "via"} {
			if v, ok := m[k].(string); ok {
				text += " " + k + "=" + v
			}
		}
		m["raw"], m["text"] = line, text
		ip := ap.Addr().String()
		out[ip] = append(out[ip], m)
	}
	return out
}

// expectLog waits for p's log line about ip and checks that its message,
// error and "via" (as "via=local") contain one of the |-separated
// alternatives in want.
func expectLog(t *testing.T, p *proc, ip, want string) {
	t.Helper()
	testkit.WaitFor(t, "a log line for "+ip, func() bool { return len(logLines(t, p, ip)) > 0 })
	line := logLines(t, p, ip)[0]
	for _, w := range strings.Split(want, "|") {
		if strings.Contains(line["text"].(string), w) {
			return
		}
	}
	t.Errorf("log line %s\nwant it to say %q", line["raw"], want)
}

// expectClosed checks stickyd closes c without sending a byte, within the
// hang guard, and returns how long that took.
func expectClosed(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(testkit.Guard))
	got, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("not closed within %v", testkit.Guard)
	}
	if len(got) > 0 {
		t.Errorf("refused connection received %q", got)
	}
	return time.Since(start)
}

func v2Raw(cmd, fam byte, length uint16, body ...byte) []byte {
	return append(append(append([]byte{}, pp.SIGV2...), cmd, fam, byte(length>>8), byte(length)), body...)
}

var addr4 = []byte{1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2} // 1.2.3.4:1 -> 5.6.7.8:2

// hostileCase is one hostile client; run plays it on a fresh connection
// from ip and checks what the client sees. The single log line about the
// connection must contain log.
type hostileCase struct {
	name    string
	trusted bool // client inside --accept-proxy
	http    bool // against the header-mode stickyd
	run     func(t *testing.T, h *hostile, c *net.TCPConn)
	log     string
}

// refused is a case body: send b (then half-close if shut) and expect
// stickyd to close the connection without relaying anything.
func refused(b []byte, shut bool) func(*testing.T, *hostile, *net.TCPConn) {
	return func(t *testing.T, h *hostile, c *net.TCPConn) {
		c.Write(b)
		if shut {
			c.CloseWrite()
		}
		expectClosed(t, c)
	}
}

// timedOut is a case body: send b and expect the connection to be closed
// at the header timeout, not before.
func timedOut(b []byte) func(*testing.T, *hostile, *net.TCPConn) {
	return func(t *testing.T, h *hostile, c *net.TCPConn) {
		c.Write(b)
		if d := expectClosed(t, c); d < hostileTimeout-200*time.Millisecond {
			t.Errorf("closed after %v, before the %v header timeout", d, hostileTimeout)
		}
	}
}

// served is a case body: send b and expect the backend to be told the
// address want (the socket's when empty), then an echo.
func served(b []byte, want string) func(*testing.T, *hostile, *net.TCPConn) {
	return func(t *testing.T, h *hostile, c *net.TCPConn) {
		c.Write(b)
		_, told, br := testkit.Greeting(t, c)
		w := want // not want itself: the case runs again under -count
		if w == "" {
			w = c.LocalAddr().String()
		}
		if told.String() != w {
			t.Errorf("backend told %s, want %s", told, w)
		}
		c.Write([]byte("ping\n"))
		if line, err := br.ReadString('\n'); line != "ping\n" {
			t.Errorf("echo %q, %v", line, err)
		}
	}
}

const hostileTimeout = 2 * time.Second

var hostileCases = []hostileCase{
	{"v1 longer than 107 bytes", true, false, refused([]byte("PROXY TCP4 "+strings.Repeat("1", 120)), false), "v1 header longer than 107 bytes"},
	{"v1 unknown family", true, false, refused([]byte("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), false), `parse v1 header "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"`},
	{"v1 bad source address", true, false, refused([]byte("PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n"), false), "invalid address"},
	{"v1 address of the wrong family", true, false, refused([]byte("PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n"), false), "invalid address"},
	{"v1 bad port", true, false, refused([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"), false), "invalid port"},
	{"v1 missing port", true, false, refused([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), false), `parse v1 header "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"`},
	{"v1 missing CR", true, false, refused([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), false), "must end with"},
	{"v1 no line end at all", true, false, refused([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2"), true), "header truncated"},
	{"v2 bad signature tail", true, false, refused(append(append([]byte{}, pp.SIGV2[:11]...), 'X', 0x21, 0x11, 0, 12), false), "no PROXY header from trusted upstream"},
	{"v2 bad version", true, false, refused(v2Raw(0x31, 0x11, 12, addr4...), false), "parse v2 header (command 0x31, family 0x11, length 12): proxyproto: unsupported proxy protocol version and command"},
	{"v2 bad command", true, false, refused(v2Raw(0x2F, 0x11, 12, addr4...), false), "unsupported proxy protocol version and command"},
	{"v2 unknown family", true, false, refused(v2Raw(0x21, 0x71, 12, addr4...), false), "unsupported address family"},
	{"v2 length lies short", true, false, refused(v2Raw(0x21, 0x11, 4, addr4[:4]...), false), "invalid length"},
	{"v2 length lies long", true, false, refused(v2Raw(0x21, 0x11, 200, addr4...), true), "header truncated"},
	{"v2 length 65535", true, false, refused(v2Raw(0x21, 0x11, 65535, addr4...), false), "v2 length 65535 over"},
	{"v2 address block too short for its family", true, false, refused(v2Raw(0x21, 0x21, 12, addr4...), false), "invalid length"},
	{"v2 truncated address block", true, false, refused(v2Raw(0x21, 0x21, 36, addr4...), true), "header truncated"},
	{"v2 malformed TLV", true, false, refused(v2Raw(0x21, 0x11, 16, append(append([]byte{}, addr4...), 0xEA, 0x00, 0x09, 'x')...), false), "TLV"},
	{"v2 LOCAL with junk block", true, false, served(v2Raw(0x20, 0x11, 20, append(append([]byte{}, addr4...), "junk!!!!"...)...), ""), "via=local"},
	{"v2 LOCAL with junk and no family", true, false, served(v2Raw(0x20, 0x00, 7, []byte("garbage")...), ""), "via=local"},
	{"header one byte at a time", true, false, func(t *testing.T, h *hostile, c *net.TCPConn) {
		for _, b := range []byte("PROXY TCP4 198.51.100.9 192.0.2.1 4242 80\r\n") {
			c.Write([]byte{b})
			time.Sleep(5 * time.Millisecond) // 44 bytes: about 220ms, well within the timeout
		}
		served(nil, "198.51.100.9:4242")(t, h, c)
	}, "via=proxy-v1"},
	{"v2 header one byte at a time", true, false, func(t *testing.T, h *hostile, c *net.TCPConn) {
		for _, b := range v2Raw(0x21, 0x11, 12, addr4...) {
			c.Write([]byte{b})
			time.Sleep(5 * time.Millisecond)
		}
		served(nil, "1.2.3.4:1")(t, h, c)
	}, "via=proxy-v2"},
	{"header never completes", true, false, timedOut([]byte("PROXY TCP4 1.2.3.4 ")), "header timeout"},
	{"v2 header never completes", true, false, timedOut(v2Raw(0x21, 0x11, 12, addr4[:5]...)), "header timeout"},
	{"silent trusted peer", true, false, timedOut(nil), "header timeout after 0 bytes"},
	{"v1 header from an untrusted peer", false, false, refused([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), false), "PROXY header from untrusted peer"},
	{"v2 header from an untrusted peer", false, false, refused(v2Raw(0x21, 0x11, 12, addr4...), false), "PROXY header from untrusted peer"},
	{"garbage from a trusted peer", true, false, refused(garbage(512), false), "no PROXY header from trusted upstream"},
	{"garbage from an untrusted peer is just data", false, false, func(t *testing.T, h *hostile, c *net.TCPConn) {
		g := garbage(4096)
		c.Write(g)
		_, _, br := testkit.Greeting(t, c)
		echo := make([]byte, len(g))
		if _, err := io.ReadFull(br, echo); err != nil || string(echo) != string(g) {
			t.Errorf("garbage not relayed intact: %v", err)
		}
	}, "connection closed via=socket"},
	{"client reset mid-stream", false, false, func(t *testing.T, h *hostile, c *net.TCPConn) {
		served(nil, "")(t, h, c)
		c.Write([]byte("more data, whose echo the client will not read\n"))
		c.SetLinger(0)
		c.Close()
	}, "reset by peer|broken pipe"},
	{"backend reset mid-stream", false, false, func(t *testing.T, h *hostile, c *net.TCPConn) {
		served(nil, "")(t, h, c)
		c.Write([]byte("RESET\n"))
		c.SetReadDeadline(time.Now().Add(testkit.Guard))
		if _, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset by peer") {
			t.Errorf("after the backend's reset: %v", err)
		}
	}, "reset by peer"},
	{"HTTP header block never ends", false, true, timedOut([]byte("GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 203.0.113.1\r\n")), "HTTP header block not complete before the timeout"},
	{"HTTP header block over the limit", false, true, func(t *testing.T, h *hostile, c *net.TCPConn) {
		go c.Write([]byte("GET / HTTP/1.1\r\nX-Pad: " + strings.Repeat("a", 40000)))
		c.SetReadDeadline(time.Now().Add(testkit.Guard))
		got, _ := io.ReadAll(c)
		if !strings.HasPrefix(string(got), "HTTP/1.1 400 Bad Request\r\n") {
			t.Errorf("answer %q, want a 400", got)
		}
	}, "HTTP header block over the size limit"},
	{"HTTP request carrying a PROXY header", false, true, refused([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"), false), "PROXY header from untrusted peer"},
}

func garbage(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{42}).Read(b)
	b[0] = 0xFF // neither 'P' nor '\r': not a header prefix
	return b
}

func TestHostileBattery(t *testing.T) {
	h := &hostile{backend: startResetBackend(t), used: map[string]string{}}
	common := []string{"--backend", "b=" + h.backend.Addr(), "--proxy-header-timeout", hostileTimeout.String(), "--log-level", "debug",
		"--log-rate-limit", "100000"} // a line for every case, back to back
	h.proxy = startStickyd(t, append(common, "--accept-proxy", "127.1.0.0/16")...)
	h.http = startStickyd(t, append(common, "--client-ip-header", "X-Forwarded-For")...)
	baseProxy, baseHTTP := settledFDs(t, h.proxy), settledFDs(t, h.http)

	for _, tc := range hostileCases {
		t.Run(tc.name, func(t *testing.T) {
			p := h.proxy
			if tc.http {
				p = h.http
			}
			ip := h.ip(tc.trusted, tc.name)
			c := testkit.Dial(t, ip, p.addr)
			tc.run(t, h, c)
			c.Close()
			expectLog(t, p, ip, tc.log)
		})
	}
	t.Run("9000 connections opened and dropped at once", func(t *testing.T) {
		dropMany(t, h, 9000)
	})

	// Every case got exactly one line, now that all have ended.
	testkit.WaitFor(t, "descriptors back to the baseline", func() bool {
		return h.proxy.fdCount(t) <= baseProxy && h.http.fdCount(t) <= baseHTTP
	})
	logs := map[*proc]map[string][]map[string]any{h.proxy: logsByIP(h.proxy), h.http: logsByIP(h.http)}
	for ip, name := range h.used {
		p := h.proxy
		if hostileCaseNamed(name).http {
			p = h.http
		}
		if lines := logs[p][ip]; len(lines) != 1 {
			t.Errorf("%s: %d log lines, want 1:", name, len(lines))
			for _, l := range lines {
				t.Log(l["raw"])
			}
		}
	}
	// A connection dropped before its first byte is a probe, not an error
	// (HAProxy and NLB health checks close with a reset), unless it outlived
	// the header timeout.
	timeouts, logged := 0, 0
	for ip, lines := range logs[h.proxy] {
		if !strings.HasPrefix(ip, "127.1.") && !strings.HasPrefix(ip, "127.5.") || h.used[ip] != "" {
			continue
		}
		for _, l := range lines {
			switch text := l["text"].(string); {
			case strings.Contains(text, "header timeout after 0 bytes"):
				timeouts++
			case l["level"] != "debug":
				if logged++; logged <= 3 {
					t.Errorf("dropped connection logged: %s", l["raw"])
				}
			}
		}
	}
	if logged > 0 {
		t.Errorf("%d dropped connections logged in all", logged)
	}
	t.Logf("%d burst connections outlived the header timeout", timeouts)
	for _, p := range []*proc{h.proxy, h.http} {
		if _, told := greetingFrom(t, "127.3.0.1", p.addr); told.Addr().String() != "127.3.0.1" {
			t.Errorf("after the battery a new client was announced as %s", told)
		}
		if strings.Contains(p.stderr.String(), `"level":"error"`) || strings.Contains(p.stderr.String(), "panic") {
			t.Errorf("error-level log lines:\n%s", p.stderr.String())
		}
	}
}

func hostileCaseNamed(name string) hostileCase {
	for _, tc := range hostileCases {
		if tc.name == name {
			return tc
		}
	}
	return hostileCase{}
}

// greetingFrom connects from ip, sends an HTTP request naming ip in
// X-Forwarded-For (the header-mode stickyd needs one; for the other it is
// data), and returns the greeting. The connection is closed.
func greetingFrom(t *testing.T, ip, addr string) (string, netip.AddrPort) {
	t.Helper()
	c := testkit.Dial(t, ip, addr)
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: %s\r\n\r\n", ip)
	name, told, _ := testkit.Greeting(t, c)
	return name, told
}

// settledFDs returns p's descriptor count once a served connection has
// come and gone.
func settledFDs(t *testing.T, p *proc) int {
	t.Helper()
	before := p.fdCount(t)
	greetingFrom(t, "127.3.0.2", p.addr)
	testkit.WaitFor(t, "warm-up connection gone", func() bool { return p.fdCount(t) <= before })
	return p.fdCount(t)
}

// dropMany opens n connections at once (a quarter from untrusted peers, for
// which backends are dialed too; the rest from trusted ones, which owe a
// header), then drops them all, half with a reset.
func dropMany(t *testing.T, h *hostile, n int) {
	conns := make([]*net.TCPConn, n)
	testkit.Parallel(t, n, 64, func(i int) error {
		ip := fmt.Sprintf("127.1.%d.%d", 100+i/250, 1+i%250) // trusted
		if i%4 == 0 {
			ip = fmt.Sprintf("127.5.%d.%d", i/250, 1+i%250)
		}
		d := net.Dialer{Timeout: testkit.Guard, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", h.proxy.addr)
		if err != nil {
			return err
		}
		conns[i] = c.(*net.TCPConn)
		return nil
	})
	for i, c := range conns {
		if c == nil {
			continue
		}
		if i%2 == 0 {
			c.SetLinger(0)
		}
		c.Close()
	}
	if t.Failed() {
		return
	}
	if strings.Contains(h.proxy.stderr.String(), "accept failed") {
		t.Error("stickyd's accept loop failed under the burst")
	}
}

// resetBackend is a PROXY-aware echo backend that resets the connection
// (SO_LINGER 0) when a read returns exactly "RESET\n".
type resetBackend struct{ testkit.Tracked }

func startResetBackend(t *testing.T) *resetBackend {
	t.Helper()
	b := &resetBackend{}
	b.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) { b.handle(c.(*net.TCPConn)) })
	return b
}

func (b *resetBackend) handle(c *net.TCPConn) {
	defer func() {
		c.Close()
		b.Forget(c)
	}()
	c.SetDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReader(c)
	h, err := pp.Read(br)
	if err != nil {
		return
	}
	fmt.Fprintf(c, "b %s\n", h.SourceAddr)
	buf := make([]byte, 32<<10)
	for {
		n, err := br.Read(buf)
		if string(buf[:n]) == "RESET\n" {
			c.SetLinger(0)
			return
		}
		if _, werr := c.Write(buf[:n]); werr != nil || err != nil {
			c.CloseWrite()
			return
		}
	}
}
