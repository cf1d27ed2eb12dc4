// Package integration_test runs the stickyd binary against real sockets on
// loopback: PROXY-aware backends in the test process, clients bound to many
// 127.x.y.z addresses, upstream proxies (HAProxy, nginx) where installed.
package integration_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
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

const hangGuard = 20 * time.Second

// proc is a running stickyd.
type proc struct {
	cmd    *exec.Cmd
	addr   string // listen address
	stderr *syncBuffer
	exited chan struct{} // closed when the process has exited
	err    error         // Wait's result, once exited is closed
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freePort reserves a loopback port and releases it.
func freePort(t *testing.T) string {
	t.Helper()
	ln := listenOn(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startStickyd runs stickyd with args plus --listen on a free port and waits
// until it accepts. It is stopped (SIGKILL) at cleanup if still running.
func startStickyd(t *testing.T, args ...string) *proc {
	t.Helper()
	addr := freePort(t)
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
	p := &proc{addr: addr, stderr: &syncBuffer{}, exited: make(chan struct{})}
	argv := append(append(append([]string(nil), wrap...), stickydBin), args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Dir = dir
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
	waitFor(t, "stickyd listening", func() bool {
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
	select {
	case <-p.exited:
	case <-time.After(hangGuard):
		t.Fatalf("stickyd did not exit after %v", sig)
	}
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

// waitFor polls cond until it holds or the hang guard expires.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testBackend is a PROXY-aware server. Each connection's header is
// recorded; the connection then gets "<name> <client addr>\n" and, after
// that, an echo of everything it sends.
type testBackend struct {
	tracked
	name string
	seen []*pp.Header // guarded by mu
}

func startBackend(t *testing.T, name string) *testBackend {
	t.Helper()
	return serveBackend(t, name, listenOn(t, "127.0.0.1:0"))
}

// serveBackend serves a testBackend on ln until the test ends.
func serveBackend(t *testing.T, name string, ln net.Listener) *testBackend {
	b := &testBackend{name: name}
	b.serve(t, ln, b.handle)
	return b
}

// listenOn listens on a loopback address.
func listenOn(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func (b *testBackend) flag() string { return b.name + "=" + b.addr() }

// tracked is a loopback listener that keeps the connections it accepted,
// so that closing it (at the latest when the test ends) closes them too.
type tracked struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu
}

// serve accepts on ln until the test ends and serves each connection with
// handle on a goroutine of its own.
func (tr *tracked) serve(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	tr.ln, tr.conns = ln, make(map[net.Conn]struct{})
	go tr.accept(handle)
	t.Cleanup(tr.close)
}

func (tr *tracked) addr() string { return tr.ln.Addr().String() }

func (tr *tracked) close() {
	tr.ln.Close()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for c := range tr.conns {
		c.Close()
	}
}

func (tr *tracked) accept(handle func(net.Conn)) {
	for {
		c, err := tr.ln.Accept()
		if err != nil {
			return
		}
		tr.mu.Lock()
		tr.conns[c] = struct{}{}
		tr.mu.Unlock()
		go handle(c)
	}
}

func (b *testBackend) handle(c net.Conn) {
	defer func() {
		c.Close()
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
	}()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := pp.Read(br)
	if err != nil {
		fmt.Fprintf(c, "%s no-proxy-header %v\n", b.name, err)
		return
	}
	c.SetReadDeadline(time.Time{})
	b.mu.Lock()
	b.seen = append(b.seen, h)
	b.mu.Unlock()
	fmt.Fprintf(c, "%s %s\n", b.name, h.SourceAddr)
	io.Copy(c, br) // echo; half-closes below
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

func (b *testBackend) headers() []*pp.Header {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*pp.Header(nil), b.seen...)
}

// dialFrom connects to addr from the local address src (a 127.x.y.z).
func dialFrom(t *testing.T, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: hangGuard}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	c.SetDeadline(time.Now().Add(hangGuard))
	return c.(*net.TCPConn)
}

// greeting reads the backend's first line: its name and the client address
// it was told.
func greeting(t *testing.T, c net.Conn) (backend string, client netip.AddrPort, br *bufio.Reader) {
	t.Helper()
	br = bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v (got %q)", err, line)
	}
	name, addr, _ := strings.Cut(strings.TrimSpace(line), " ")
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("greeting %q: %v", line, err)
	}
	return name, ap, br
}

// clientIP returns the i-th distinct loopback client address.
func clientIP(i int) string {
	return fmt.Sprintf("127.%d.%d.%d", 10+i/250/256%200, i/250%256, 1+i%250)
}
