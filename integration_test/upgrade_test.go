package integration_test

// The SIGUSR2 upgrade: hand-over, failure, refusal with workers.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// opsDaemon is a stickyd started with its log in a file (so that the
// process it hands over to, which inherits the log, does not hold a pipe
// of the test open).
type opsDaemon struct {
	cmd     *exec.Cmd
	log     string
	pidFile string
	exited  chan struct{}
}

func opsStartDaemon(t *testing.T, addr string, args ...string) *opsDaemon {
	t.Helper()
	dir := t.TempDir()
	d := &opsDaemon{log: filepath.Join(dir, "stickyd.log"), pidFile: filepath.Join(dir, "stickyd.pid"), exited: make(chan struct{})}
	f, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.cmd = exec.Command(stickydBin, append([]string{"--listen", addr, "--log-format", "json", "--pid-file", d.pidFile}, args...)...)
	d.cmd.Dir = dir
	d.cmd.Stdout, d.cmd.Stderr = f, f
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.exited
		if pid := d.pid(); pid != 0 && pid != d.cmd.Process.Pid && opsIsStickyd(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("stickyd log:\n%s", b)
		}
	})
	testkit.WaitFor(t, "stickyd serving", func() bool { return d.pid() == d.cmd.Process.Pid })
	return d
}

// pid returns the pid in the pid file, or 0.
func (d *opsDaemon) pid() int {
	b, err := os.ReadFile(d.pidFile)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func (d *opsDaemon) logText() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

func opsIsStickyd(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), stickydBin)
}

// opsGone reports whether pid has exited (a zombie counts as gone).
func opsGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

// opsStream connects from ever new client IPs until stop, counting
// successes and failures.
type opsStream struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	stop       chan struct{}
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

func opsStartStream(addr string, loops int) *opsStream {
	s := &opsStream{stop: make(chan struct{})}
	for k := range loops {
		s.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-s.stop:
					return
				default:
				}
				if err := opsPing(testkit.ClientIP(1000+k*100000+i), addr); err != nil {
					s.failed.Add(1)
					s.firstErr.CompareAndSwap(nil, err)
				} else {
					s.ok.Add(1)
				}
			}
		})
	}
	return s
}

// opsPing connects from ip, speaks first (so that stickyd does not wait
// for a server-speaks-first greeting), and checks the greeting and the echo.
func opsPing(ip, addr string) error {
	c, err := testkit.DialFrom(ip, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	greet, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("client %s: greeting: %w (got %q)", ip, err, greet)
	}
	if echo, err := br.ReadString('\n'); err != nil || echo != "ping\n" {
		return fmt.Errorf("client %s: echo %q: %v", ip, echo, err)
	}
	return nil
}

func (s *opsStream) finish() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.wg.Wait()
}

// SIGUSR2 hands the listening socket to a new process; clients connecting
// all along are served, the old process drains its open connection and
// exits 0, and the new one can be upgraded again.
func TestUpgradeSIGUSR2(t *testing.T) {
	_, args := fourBackends(t)
	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	accessLog := filepath.Join(t.TempDir(), "access.log")
	d := opsStartDaemon(t, addr, append(args, "--admin", adm, "--drain-timeout", "20s", "--access-log", accessLog)...)
	oldPid := d.cmd.Process.Pid
	held := testkit.Dial(t, testkit.ClientIP(0), addr)
	defer held.Close()
	_, _, br := testkit.Greeting(t, held)

	s := opsStartStream(addr, 3)
	defer s.finish()
	testkit.WaitFor(t, "the stream flowing", func() bool { return s.ok.Load() > 200 })
	d.cmd.Process.Signal(syscall.SIGUSR2)
	testkit.WaitFor(t, "the new process serving", func() bool { p := d.pid(); return p != 0 && p != oldPid })
	newPid := d.pid()
	opsEcho(t, held, br, "old process still relays me")
	select {
	case <-d.exited:
		t.Fatal("the old process exited with a connection open")
	default:
	}
	held.Close()
	testkit.Await(t, d.exited, "the old process did not exit after its last connection closed")
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("old process exit code %d", code)
	}
	n := s.ok.Load()
	testkit.WaitFor(t, "the new process serving the stream", func() bool { return s.ok.Load() > n+300 })
	if code, _ := opsDo(t, "GET", adm, "/healthz"); code != 200 {
		t.Errorf("the admin listener was not handed over: %d", code)
	}

	syscall.Kill(newPid, syscall.SIGUSR2) // and again, from the inherited socket
	testkit.WaitFor(t, "a third process serving", func() bool { p := d.pid(); return p != 0 && p != newPid })
	testkit.WaitFor(t, "the second process gone", func() bool { return opsGone(newPid) })
	n = s.ok.Load()
	testkit.WaitFor(t, "the third process serving the stream", func() bool { return s.ok.Load() > n+300 })
	s.finish()
	if f := s.failed.Load(); f != 0 {
		t.Errorf("%d of %d clients failed during the upgrades; first: %v", f, f+s.ok.Load(), s.firstErr.Load())
	}
	t.Logf("%d clients served across two upgrades", s.ok.Load())
	// The three processes appended to one access log, whole lines each:
	// every client served has its line, the held one's by the first.
	var relayed int64
	heldSeen := false
	testkit.WaitFor(t, "a line for every client served", func() bool {
		relayed, heldSeen = 0, false
		for _, e := range readAccess(t, accessLog) {
			if e.Status == "relayed" {
				relayed++
			}
			heldSeen = heldSeen || e.Client == held.LocalAddr().String()
		}
		return relayed >= s.ok.Load()+1 && heldSeen
	})
	if !strings.Contains(d.logText(), `"msg":"upgrade: new process ready"`) {
		t.Error("no upgrade line in the log")
	}
}

// A new process that cannot start (here: the config became invalid) is
// reported, and the old one keeps serving.
func TestUpgradeFailureKeepsServing(t *testing.T) {
	a := testkit.StartBackend(t, "a")
	path := filepath.Join(t.TempDir(), "stickyd.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("[[backend]]\nname = \"a\"\naddress = %q\n", a.Addr())), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testkit.FreePort(t)
	d := opsStartDaemon(t, addr, "--config", path)
	if err := os.WriteFile(path, []byte("send_proxy = \"v9\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGUSR2)
	testkit.WaitFor(t, "the failure", func() bool {
		return strings.Contains(d.logText(), `"msg":"upgrade failed; this process keeps serving"`)
	})
	if err := opsPing(testkit.ClientIP(0), addr); err != nil {
		t.Fatalf("after a failed upgrade: %v", err)
	}
	if p := d.pid(); p != d.cmd.Process.Pid {
		t.Errorf("pid file changed to %d", p)
	}
}
