package integration_test

// HTTP header mode at RFC 9112's edges (issue 11 item 7): a header block
// that parsers disagree on is answered 400 by stickyd instead of being
// routed by a header the backend does not see.

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// rawHTTP sends req to addr and returns everything it gets back until the
// server closes.
func rawHTTP(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testkit.Guard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(c)
	return string(out)
}

// startScriptBackend runs an HTTP server script (node or python3) that
// answers "xff=[<X-Forwarded-For it parsed>]" and returns its address.
func startScriptBackend(t *testing.T, tool, script string) string {
	t.Helper()
	bin := requireTool(t, tool)
	addr := testkit.FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	path := filepath.Join(t.TempDir(), "server")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	startUpstream(t, addr, bin, path, port)
	return addr
}

const nodeXFF = `require('http').createServer((req, res) => {
  res.setHeader('Connection', 'close');
  res.end('xff=[' + (req.headers['x-forwarded-for'] || 'None') + ']\n');
}).listen(+process.argv[2], '127.0.0.1');
`

const pythonXFF = `import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("xff=[%s]\n" % self.headers.get("X-Forwarded-For")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
`

// TestHeaderModeParserDifferential: Python's http.server reads an obs-fold
// line as part of the previous field and splits at a bare CR, so a block
// that stickyd would route by X-Forwarded-For 6.6.6.6 reaches it with no
// (or another) X-Forwarded-For. stickyd answers such blocks 400 itself,
// as RFC 9112 asks; a well-formed request reaches Node and Python intact.
func TestHeaderModeParserDifferential(t *testing.T) {
	py := startScriptBackend(t, "python3", pythonXFF)
	node := startScriptBackend(t, "node", nodeXFF)
	bad := map[string]string{
		"obs-fold":               "GET / HTTP/1.1\r\nHost: x\r\nX-Foo: bar\r\n X-Forwarded-For: 6.6.6.6\r\n\r\n",
		"space before colon":     "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For : 6.6.6.6\r\n\r\n",
		"bare CR":                "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1, 6.6.6.6\r\nX-Foo: a\rX-Forwarded-For: 7.7.7.7\r\n\r\n",
		"bare LF (no CR at all)": "GET / HTTP/1.1\nHost: x\nX-Forwarded-For: 6.6.6.6\n\n",
	}
	for name, req := range bad {
		// The differential, shown on the backend alone.
		t.Logf("%s, straight to python: %q", name, lastLine(rawHTTP(t, py, req)))
	}
	if got := rawHTTP(t, py, bad["obs-fold"]); !strings.Contains(got, "xff=[None]") {
		t.Errorf("python read the obs-fold request as %q; the test expects it to see no X-Forwarded-For", got)
	}
	for _, backend := range []string{py, node} {
		p := startStickyd(t, "--backend", "app="+backend, "--send-proxy", "none", "--client-ip-header", "X-Forwarded-For")
		for name, req := range bad {
			got := rawHTTP(t, p.addr, req)
			if !strings.HasPrefix(got, "HTTP/1.1 400 Bad Request\r\n") || !strings.Contains(got, "malformed HTTP header block") {
				t.Errorf("%s through stickyd: got %q, want stickyd's 400", name, got)
			}
		}
		good := "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, 127.0.0.1\r\n\r\n"
		if got := rawHTTP(t, p.addr, good); !strings.Contains(got, "200 OK") || !strings.Contains(got, "xff=[6.6.6.6, 127.0.0.1]") {
			t.Errorf("well-formed request through stickyd: %q", got)
		}
		if !strings.Contains(p.stderr.String(), "client_ip_header without accept_proxy") {
			t.Error("no start-up warning for header mode without accept_proxy")
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// TestAcceptProxyEverybodyWarned: trusting 0.0.0.0/0 or ::/0 is logged at
// start with the fix.
func TestAcceptProxyEverybodyWarned(t *testing.T) {
	b := testkit.StartBackend(t, "b1")
	p := startStickyd(t, "--backend", b.Flag(), "--accept-proxy", "127.0.0.0/8", "--accept-proxy", "::/0")
	for _, want := range []string{`"msg":"accept_proxy trusts every address`, `"accept_proxy":"::/0"`, `"fix":`} {
		if !strings.Contains(p.stderr.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if strings.Contains(p.stderr.String(), "127.0.0.0/8\",\"fix") {
		t.Error("a narrow accept_proxy was warned about")
	}
}
