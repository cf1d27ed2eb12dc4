package integration_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// Config at scale and reloads that take long: a reload runs beside the
// signal loop, so SIGTERM is acted on while one is in flight (issue 11,
// item 13).

// blackHoleDNS is a UDP socket that reads queries and never answers: a
// resolver asking it waits for its full timeout (5 s).
func blackHoleDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return pc.LocalAddr().String()
}

// A SIGHUP whose reload hangs on DNS does not delay SIGTERM: stickyd stops
// (and logs "stopping") before the reload's DNS lookup has even timed out.
func TestReloadDoesNotDelaySIGTERM(t *testing.T) {
	b := testkit.StartBackend(t, "b0")
	path := filepath.Join(t.TempDir(), "stickyd.toml")
	static := fmt.Sprintf("[[backend]]\nname = \"b0\"\naddress = %q\n", b.Addr())
	if err := os.WriteFile(path, []byte(static), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startStickyd(t, "--config", path)
	slow := fmt.Sprintf("dns_server = %q\n", blackHoleDNS(t)) + static + "[[backend]]\ndns = \"app.test:80\"\n"
	if err := os.WriteFile(path, []byte(slow), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.WaitFor(t, "reloading config", func() bool { return opsLogged(p, `"msg":"reloading config"`) })
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	log := p.stderr.String()
	stopping := strings.Index(log, `"msg":"stopping"`)
	resolved := strings.Index(log, `"msg":"reload: dns backends did not resolve"`)
	if stopping < 0 || (resolved >= 0 && resolved < stopping) {
		t.Fatalf("SIGTERM waited for the reload's DNS lookup (stopping at %d, dns timeout at %d):\n%s",
			stopping, resolved, log)
	}
}
