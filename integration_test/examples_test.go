package integration_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

// Workers in other languages (examples/go, examples/python) run under
// stickyd and report each client's own IP from the PROXY header, v1 and
// v2; a LOCAL header keeps the socket address; and a worker that reads no
// header works with --send-proxy none.

// twistedPython returns a python3 that imports twisted, or skips.
func twistedPython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import twisted").Run() == nil {
			return py
		}
	}
	t.Skip("no python3 with Twisted (Debian: python3-twisted; ./test.sh installs it)")
	return ""
}

// buildGoWorker builds examples/go into the test's temp dir.
func buildGoWorker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "go-worker")
	out, err := exec.Command("go", "build", "-o", bin, "../examples/go").CombinedOutput()
	if err != nil {
		t.Fatalf("go build examples/go: %v\n%s", err, out)
	}
	return bin
}

func TestExampleWorkersOtherLanguages(t *testing.T) {
	const workers = 2
	goBin := buildGoWorker(t)
	for _, lang := range []string{"go", "python"} {
		for _, version := range []string{"v2", "v1"} {
			t.Run(lang+"/"+version, func(t *testing.T) {
				command := []string{goBin}
				if lang == "python" {
					py := twistedPython(t)
					script, _ := filepath.Abs("../examples/python/worker.py")
					command = []string{py, script}
				}
				base := testkit.FreePortBase(t, workers, workerPortsLo, workerPortsHi)
				cfg := writeWorkersConfig(t, base, command...)
				p := startStickyd(t, append([]string{"--config", cfg, "--send-proxy", version, "--workers", strconv.Itoa(workers), "--"}, command...)...)
				pids := waitWorkersReady(t, p, workers)
				var ips []string
				for i := range 40 {
					ips = append(ips, testkit.ClientIP(1000+i))
				}
				perSlot := checkStickyHello(t, p.addr, ips, 2, lookupHomes(t, cfg, workers, ips), pids)
				checkLocalKeepsSocket(t, "127.0.0.1:"+strconv.Itoa(base))
				t.Logf("%s worker, PROXY %s: %d IPs, each answered by its home worker with its own IP; per worker %v; a LOCAL header keeps the socket address",
					lang, version, len(ips), perSlot)
			})
		}
	}
}

// TestExampleWorkersUnixSockets: the same workers on SOCKET (--socket-dir).
func TestExampleWorkersUnixSockets(t *testing.T) {
	goBin := buildGoWorker(t)
	for _, lang := range []string{"go", "python"} {
		t.Run(lang, func(t *testing.T) {
			command := []string{goBin}
			if lang == "python" {
				script, _ := filepath.Abs("../examples/python/worker.py")
				command = []string{twistedPython(t), script}
			}
			dir := t.TempDir()
			p := startStickyd(t, append([]string{"--socket-dir", dir, "--workers", "2", "--"}, command...)...)
			waitWorkersReady(t, p, 2)
			for i := range 10 {
				ip := testkit.ClientIP(3000 + i)
				if body := httpGetFrom(t, ip, p.addr); !strings.HasSuffix(body, "says hello to "+ip+"\n") {
					t.Errorf("GET from %s through a Unix-socket worker: %q", ip, body)
				}
			}
		})
	}
}

// checkLocalKeepsSocket sends a v2 LOCAL header and a GET straight to a
// worker from 127.0.0.2: the worker must name the socket's address.
func checkLocalKeepsSocket(t *testing.T, worker string) {
	t.Helper()
	c := testkit.Dial(t, "127.0.0.2", worker)
	defer c.Close()
	h := &pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}
	if _, err := h.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	b, _ := readAll(c)
	if !strings.HasSuffix(string(b), "says hello to 127.0.0.2\n") {
		t.Errorf("LOCAL header: the worker answered %q, want the socket address 127.0.0.2", b)
	}
}

func readAll(c net.Conn) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out, err
		}
	}
}

// TestSendProxyNoneWorkers: a worker that reads no PROXY header (Python's
// http.server) works behind --send-proxy none.
func TestSendProxyNoneWorkers(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("plain worker\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	command := []string{"sh", "-c", `exec "$0" -m http.server --bind 127.0.0.1 --directory "$1" "$PORT"`, py, dir}
	base := testkit.FreePortBase(t, 2, workerPortsLo, workerPortsHi)
	cfg := writeWorkersConfig(t, base, command...)
	p := startStickyd(t, append([]string{"--config", cfg, "--send-proxy", "none", "--workers", "2", "--"}, command...)...)
	waitWorkersReady(t, p, 2)
	for i := range 10 {
		if body := httpGetFrom(t, testkit.ClientIP(2000+i), p.addr); body != "plain worker\n" {
			t.Errorf("GET through --send-proxy none: %q", body)
		}
	}
}
