// Package integration_test runs the stickyd binary against real sockets on
// loopback: PROXY-aware backends in the test process, clients bound to many
// 127.x.y.z addresses, upstream proxies (HAProxy, nginx) where installed.
package integration_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// stickydBin is built once by TestMain with the same command as the README.
var stickydBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "stickyd-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stickydBin = filepath.Join(dir, "stickyd")
	build := exec.Command("go", "build", "-o", stickydBin, ".")
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build stickyd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running stickyd.
type proc struct {
	cmd    *exec.Cmd
	addr   string // listen address
	stderr *testkit.SyncBuffer
	exited chan struct{} // closed when the process has exited
	err    error         // Wait's result, once exited is closed
}

// startStickyd runs stickyd with args plus --listen on a free port and waits
// until it accepts. It is stopped (SIGKILL) at cleanup if still running.
func startStickyd(t *testing.T, args ...string) *proc {
	t.Helper()
	addr := testkit.FreePort(t)
	return launch(t, t.TempDir(), addr, append([]string{"--listen", addr, "--log-format", "json"}, args...)...)
}

// launch runs stickyd with args in dir (t.TempDir() has no ./config.toml)
// and waits for its "stickyd listening" log line: a probe connection would
// reach a backend. It is SIGKILLed at cleanup if still running.
func launch(t *testing.T, dir, addr string, args ...string) *proc {
	t.Helper()
	return launchVia(t, nil, dir, addr, args...)
}

// launchVia is launch with the command run through wrap, a command that
// execs its arguments (a shell that lowers a limit first, say), so that
// the process is still stickyd's.
func launchVia(t *testing.T, wrap []string, dir, addr string, args ...string) *proc {
	t.Helper()
	argv := append(append(append([]string(nil), wrap...), stickydBin), args...)
	return launchArgv(t, argv, dir, nil, addr)
}

// launchArgv is launch of a whole command line (argv[0] runs, and is or
// execs a stickyd), with env as its environment (nil: the test's).
func launchArgv(t *testing.T, argv []string, dir string, env []string, addr string) *proc {
	t.Helper()
	p := &proc{addr: addr, stderr: &testkit.SyncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Dir, p.cmd.Env = dir, env
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("stickyd log:\n%s", p.stderr.String())
		}
	})
	testkit.WaitFor(t, "stickyd listening", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("stickyd exited: %v\n%s", p.err, p.stderr.String())
		default:
		}
		return strings.Contains(p.stderr.String(), `"msg":"stickyd listening"`)
	})
	return p
}

// stop sends sig and returns the exit code.
func (p *proc) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	testkit.Await(t, p.exited, "stickyd did not exit after %v", sig)
	return p.cmd.ProcessState.ExitCode()
}

// fdCount returns how many descriptors the process holds.
func (p *proc) fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// fdTargets lists what the process's descriptors point to, for failure
// messages.
func (p *proc) fdTargets(t *testing.T) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+"->"+target)
	}
	return out
}

// logsOf decodes each of p's JSON log lines whose message is msg into a T
// (a struct with the fields wanted, or map[string]any for all of them).
func logsOf[T any](p *proc, msg string) []T { return logsIn[T](p.stderr.String(), msg) }

// logsIn is logsOf for a log's text (a log file's, say).
func logsIn[T any](text, msg string) []T {
	var out []T
	for _, line := range strings.Split(text, "\n") {
		var head struct {
			Msg string `json:"msg"`
		}
		var v T
		if json.Unmarshal([]byte(line), &head) == nil && head.Msg == msg && json.Unmarshal([]byte(line), &v) == nil {
			out = append(out, v)
		}
	}
	return out
}
