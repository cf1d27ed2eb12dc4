package integration_test

// Logs under attack (issue 11 items 3 and 4): warnings sampled per cause,
// dial errors summarised, and a log output nobody reads never stalls
// stickyd.

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// flood runs n connections from `clients` goroutines, each from its own
// loopback address: send payload, read until stickyd closes or sends
// anything. It returns how long the flood took.
func flood(t *testing.T, addr string, clients, n int, payload string) time.Duration {
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			d := net.Dialer{Timeout: testkit.Guard, LocalAddr: &net.TCPAddr{IP: net.ParseIP(testkit.ClientIP(5000 + i))}}
			buf := make([]byte, 512)
			for j := i; j < n; j += clients {
				c, err := d.Dial("tcp", addr)
				if err != nil {
					errs <- err
					return
				}
				c.SetDeadline(time.Now().Add(testkit.Guard))
				c.Write([]byte(payload))
				for n := 0; err == nil && n == 0; {
					n, err = c.Read(buf)
				}
				c.Close()
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("flood: %v", err)
	}
	return time.Since(start)
}

// TestLogFloodSampled: clients looping untrusted PROXY headers, and clients
// of a proxy whose backends are all down, make at most the burst (10 a
// second) of lines per cause; the rest are counted in a summary line and
// the metric, and one refusal facing 200 dead backends is one short line.
func TestLogFloodSampled(t *testing.T) {
	b := testkit.StartBackend(t, "b1")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", b.Flag(), "--admin", adm)
	took := flood(t, p.addr, 8, 1500, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
	// Nearly all are refused (a header that arrives late may be relayed).
	n := int(opsMetric(t, adm, `stickyd_header_errors_total{kind="untrusted"}`))
	refused := logsOf[map[string]any](p, "connection refused")
	if max := 10 * (int(took.Seconds()) + 2); len(refused) > max || n < 1000 {
		t.Errorf("%d refusal lines for %d refused connections in %v, want at most %d", len(refused), n, took, max)
	}
	if v := opsMetric(t, adm, `stickyd_log_lines_dropped_total{reason="rate_limited"}`); v != float64(n-len(refused)) {
		t.Errorf("rate_limited metric %v, want %d", v, n-len(refused))
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	var suppressed float64
	for _, m := range logsOf[map[string]any](p, "log lines suppressed (each cause is logged at most burst times a second)") {
		suppressed += m["suppressed"].(float64)
		if !strings.Contains(fmt.Sprint(m["top"]), "connection refused (untrusted)") {
			t.Errorf("summary does not name the cause: %v", m)
		}
	}
	if int(suppressed) != n-len(refused) {
		t.Errorf("summaries count %v suppressed lines, want %d", suppressed, n-len(refused))
	}
}

// TestLogAllBackendsDown: with every backend down, a refusal is one line
// that summarises the dials, and the per-backend dial warnings are sampled.
func TestLogAllBackendsDown(t *testing.T) {
	args := []string{}
	for i := 0; i < 200; i++ {
		args = append(args, "--backend", fmt.Sprintf("d%d=%s", i, testkit.RefusedAddr(t, "127.0.0.2")))
	}
	p := startStickyd(t, args...)
	took := flood(t, p.addr, 4, 400, "hello\n")
	p.stop(t, syscall.SIGTERM)
	refused := logsOf[map[string]any](p, "connection refused")
	if len(refused) == 0 {
		t.Fatal("no refusal logged")
	}
	for _, m := range refused {
		if m["cause"] != "no_backend" || !regexp.MustCompile(`200 dials failed \(\d+ refused(, \d+ timeout)?\); first: `).MatchString(m["error"].(string)) {
			t.Errorf("refusal %v, want cause no_backend and a summary of 200 failed dials", m)
			break
		}
	}
	max := 10 * (int(took.Seconds()) + 2)
	for _, msg := range []string{"connection refused", "backend dial failed; cooling down"} {
		if n := len(logsOf[map[string]any](p, msg)); n > max {
			t.Errorf("%d %q lines in %v, want at most %d", n, msg, took, max)
		}
	}
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if len(line) > 2048 {
			t.Errorf("a log line of %d bytes: %.300s...", len(line), line)
			break
		}
	}
}

// TestBlockedLogOutput: stickyd's stdout and stderr are a pipe nobody
// reads, and it logs every connection (debug). It keeps serving, holds a
// bounded number of goroutines and memory, counts the dropped lines, and
// exits on SIGTERM.
func TestBlockedLogOutput(t *testing.T) {
	b := testkit.StartBackend(t, "b1")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // never read
	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	proc := execStickyd(t, w, "--listen", addr, "--admin", adm, "--log-format", "json", "--log-level", "debug",
		"--backend", b.Flag())
	w.Close()
	testkit.WaitFor(t, "stickyd serving", func() bool {
		_, err := helloFirst(testkit.ClientIP(1), addr)
		return err == nil
	})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 800; j++ {
				if name, err := helloFirst(testkit.ClientIP(6000+i*800+j), addr); err != nil || name != "b1" {
					errs <- fmt.Errorf("connection %d: %q %v", j, name, err)
					return
				}
			}
		}(i)
	}
	flood(t, addr, 4, 400, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n") // refused: warnings
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if g := opsMetric(t, adm, "go_goroutines"); g > 100 {
		t.Errorf("%v goroutines after 6800 connections with the log output blocked", g)
	}
	if rss := rssKB(t, proc.Pid); rss > 150<<10 {
		t.Errorf("RSS %d KB after 6800 connections with the log output blocked", rss)
	}
	if v := opsMetric(t, adm, `stickyd_log_lines_dropped_total{reason="output_blocked"}`); v <= 0 {
		t.Errorf("output_blocked metric %v, want > 0", v)
	}
	proc.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- proc.Wait() }()
	if err := testkit.Await(t, exited, "stickyd did not exit on SIGTERM with its log output blocked"); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// helloFirst connects from ip, speaks first (so that stickyd relays at
// once), and returns the name in the backend's greeting.
func helloFirst(ip, addr string) (string, error) {
	c, err := testkit.DialFrom(ip, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	name, _, _ := strings.Cut(line, " ")
	return name, err
}

// execStickyd starts stickyd with stdout and stderr on out, without
// waiting for it; it is SIGKILLed at cleanup.
func execStickyd(t *testing.T, out *os.File, args ...string) *osProcess {
	t.Helper()
	attr := &os.ProcAttr{Dir: t.TempDir(), Files: []*os.File{nil, out, out}}
	proc, err := os.StartProcess(stickydBin, append([]string{stickydBin}, args...), attr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proc.Kill() })
	return &osProcess{Process: proc}
}

// osProcess is a process started with os.StartProcess.
type osProcess struct{ *os.Process }

func (p *osProcess) Wait() error {
	st, err := p.Process.Wait()
	if err == nil && !st.Success() {
		err = fmt.Errorf("%v", st)
	}
	return err
}

// rssKB returns a process's resident set size in KB.
func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
