package integration_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// runStickyd runs the binary to completion in dir with extra environment
// and returns its exit code, stdout and stderr.
func runStickyd(t *testing.T, dir string, env []string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	return runCommand(t, dir, env, stdin, append([]string{stickydBin}, args...)...)
}

// runCommand is runStickyd for any command line argv (a wrapper around
// stickyd, say).
func runCommand(t *testing.T, dir string, env []string, stdin string, argv ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	if dir == "" {
		cmd.Dir = t.TempDir()
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(testkit.Guard):
		cmd.Process.Kill()
		t.Fatalf("%v did not exit", argv)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.toml", "listen = \"127.0.0.1:0\"\n\nsend_proxy = \"v9\"\n[[backend]]\naddress = \"127.0.0.1:1\"\n")
	unknown := writeFile(t, dir, "unknown.toml", "listen = \"127.0.0.1:0\"\nlisen = \"x\"\n")
	busy := testkit.Listen(t, "127.0.0.1:0")
	defer busy.Close()
	tests := []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"unknown flag", []string{"--bogus"}, 2, "bogus"},
		{"bad send-proxy flag", []string{"--backend", "127.0.0.1:1", "--send-proxy", "v3"}, 2, "send-proxy"},
		{"bad backend flag", []string{"--backend", "x="}, 2, "--backend"},
		{"no backends", []string{"--listen", "127.0.0.1:0"}, 2, "backend"},
		{"bad value in file", []string{"--config", bad}, 2, "line 3"},
		{"unknown key in file", []string{"--config", unknown}, 2, `line 2 column 1: key "lisen": toml: unknown field (did you mean "listen"?)`},
		{"port in use", []string{"--listen", busy.Addr().String(), "--backend", "127.0.0.1:1"}, 1, "address already in use"},
		{"check-config bad", []string{"check-config", bad}, 2, "send_proxy"},
		{"stray arguments", []string{"--backend", "127.0.0.1:1", "node", "app.js"}, 2, "--workers"},
		{"pid file in a missing directory", []string{"--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1", "--pid-file", dir + "/gone/stickyd.pid"}, 2,
			"pid_file " + dir + "/gone/stickyd.pid: open " + dir + "/gone/stickyd.pid.check"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runStickyd(t, dir, nil, "", tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr, tc.want)
			}
		})
	}
}

func TestCheckConfigAndVersion(t *testing.T) {
	repoConfig, err := filepath.Abs("../config.toml")
	if err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runStickyd(t, "", nil, "", "check-config", repoConfig)
	if code != 0 || !strings.Contains(out, "config ok") {
		t.Errorf("repo config.toml: exit %d, %q %q", code, out, stderr)
	}
	code, out, _ = runStickyd(t, "", nil, "", "version")
	if code != 0 || !strings.HasPrefix(out, "stickyd ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

// Environment twins and the config file are honoured; flags override both.
func TestEnvAndFileAndFlagPrecedence(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.toml", fmt.Sprintf("send_proxy = \"v2\"\n[[backend]]\nname = \"file\"\naddress = %q\n", b.Addr()))

	// The file says v2, the environment says v1: the environment wins.
	t.Setenv("STICKYD_SEND_PROXY", "v1")
	p := startStickyd(t, "--config", cfg)
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	testkit.Greeting(t, c)
	c.Close()
	if v := b.Headers()[0].Version; v != 1 {
		t.Errorf("STICKYD_SEND_PROXY=v1: backend got v%d", v)
	}
	// A flag beats the environment.
	p = startStickyd(t, "--config", cfg, "--send-proxy", "v2")
	c = testkit.Dial(t, "127.0.0.1", p.addr)
	testkit.Greeting(t, c)
	c.Close()
	if v := b.Headers()[1].Version; v != 2 {
		t.Errorf("--send-proxy v2 over env v1: backend got v%d", v)
	}
}

// A misspelt environment twin is not ignored in silence: stickyd warns
// once, naming the variable and the twin it was probably meant to be,
// and serves with the setting's default (here v2, not the v1 asked for).
func TestUnknownEnvWarned(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	t.Setenv("STICKYD_SEND_PROXI", "v1")
	p := startStickyd(t, "--backend", b.Addr())
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	testkit.Greeting(t, c)
	c.Close()
	if v := b.Headers()[0].Version; v != 2 {
		t.Errorf("backend got v%d, want the default v2", v)
	}
	log := p.stderr.String()
	want := `"msg":"unknown STICKYD_ environment variable: ignored","variable":"STICKYD_SEND_PROXI","fix":"did you mean STICKYD_SEND_PROXY?"`
	if n := strings.Count(log, `"variable":"STICKYD_SEND_PROXI"`); n != 1 || !strings.Contains(log, want) {
		t.Errorf("%d warnings about STICKYD_SEND_PROXI, want 1 with %s; log:\n%s", n, want, log)
	}
}

func lookupArgs(names []string) []string {
	args := []string{"lookup"}
	for i, n := range names {
		args = append(args, "--backend", fmt.Sprintf("%s=10.0.0.%d:80", n, i+1))
	}
	return args
}

// stickyd lookup: same answer whatever the backend order, IPv4-mapped maps
// like IPv4, removing a backend moves only its addresses, bad lines are
// reported with their line number.
func TestLookup(t *testing.T) {
	names := make([]string, 16)
	for i := range names {
		names[i] = fmt.Sprintf("node-%02d", i)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	var in strings.Builder
	const n = 100000
	for range n {
		if rng.IntN(4) == 0 {
			var a [16]byte
			for j := range a {
				a[j] = byte(rng.Uint32())
			}
			fmt.Fprintln(&in, netip.AddrFrom16(a).String())
		} else {
			fmt.Fprintln(&in, netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}).String())
		}
	}
	code, out1, stderr := runStickyd(t, "", nil, in.String(), lookupArgs(names)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	shuffled := append([]string(nil), names...)
	rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	_, out2, _ := runStickyd(t, "", nil, in.String(), lookupArgs(shuffled)...)
	if out1 != out2 {
		t.Error("lookup output depends on backend order")
	}
	lines := strings.Split(strings.TrimSpace(out1), "\n")
	if len(lines) != n {
		t.Fatalf("%d lines for %d addresses", len(lines), n)
	}
	count := map[string]int{}
	for _, l := range lines {
		count[strings.Fields(l)[1]]++
	}
	for name, c := range count {
		if dev := float64(c)/float64(n/16) - 1; dev > 0.05 || dev < -0.05 {
			t.Errorf("%s got %d of %d (%+.1f%%)", name, c, n, 100*dev)
		}
	}
	// Remove node-03: only its addresses move.
	_, out3, _ := runStickyd(t, "", nil, in.String(), lookupArgs(append(append([]string{}, names[:3]...), names[4:]...))...)
	moved := 0
	for i, l := range strings.Split(strings.TrimSpace(out3), "\n") {
		was := strings.Fields(lines[i])[1]
		now := strings.Fields(l)[1]
		if was != "node-03" && was != now {
			moved++
		}
	}
	if float64(moved) > 0.005*float64(n) {
		t.Errorf("removing one backend moved %d other addresses", moved)
	}
	// Mapped addresses, arguments, and bad input.
	code, out, stderr := runStickyd(t, "", nil, "", append(lookupArgs(names), "::ffff:198.51.100.7", "198.51.100.7")...)
	f := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(f) != 2 || strings.Fields(f[0])[1] != strings.Fields(f[1])[1] {
		t.Errorf("mapped address: exit %d, %q %q", code, out, stderr)
	}
	code, out, stderr = runStickyd(t, "", nil, "10.1.1.1\nnot-an-ip\n10.1.1.2\n", lookupArgs(names)...)
	if code != 1 || !strings.Contains(stderr, "line 2") || strings.Count(out, "\n") != 2 {
		t.Errorf("bad line: exit %d, out %q, stderr %q", code, out, stderr)
	}
}

// check-config refuses the admin token setups that stickyd refuses at
// start, with the same message and exit status 2.
func TestCheckConfigAdminTokenAgrees(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"both", []string{"STICKYD_ADMIN_TOKEN=t0ken"}, []string{"--admin-token-file", empty}},
		{"empty file", nil, []string{"--admin-token-file", empty}},
		{"missing file", nil, []string{"--admin-token-file", filepath.Join(dir, "none")}},
	} {
		base := []string{"--backend", "127.0.0.1:1", "--listen", testkit.FreePort(t)}
		code, _, check := runStickyd(t, dir, tc.env, "", append(append([]string{"check-config"}, base...), tc.args...)...)
		serveCode, _, serve := runStickyd(t, dir, tc.env, "", append(base, tc.args...)...)
		if code != 2 || serveCode != 2 || check != serve || !strings.Contains(check, "admin_token_file") {
			t.Errorf("%s: check-config %d %q, stickyd %d %q", tc.name, code, check, serveCode, serve)
		}
	}
}

// check-config refuses an access log that stickyd could not open at
// start, with the same message and exit status 2, and creates nothing.
func TestCheckConfigAccessLogAgrees(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(dir, "missing", "access.log"), dir, fifo} {
		base := []string{"--backend", "127.0.0.1:1", "--listen", testkit.FreePort(t), "--access-log", path}
		code, _, check := runStickyd(t, dir, nil, "", append([]string{"check-config"}, base...)...)
		serveCode, _, serve := runStickyd(t, dir, nil, "", base...)
		if code != 2 || serveCode != 2 || check != serve || !strings.Contains(check, "access_log: ") {
			t.Errorf("%s: check-config %d %q, stickyd %d %q", path, code, check, serveCode, serve)
		}
	}
	fresh := filepath.Join(dir, "fresh.log")
	if code, out, _ := runStickyd(t, dir, nil, "", "check-config", "--backend", "127.0.0.1:1", "--access-log", fresh); code != 0 {
		t.Errorf("check-config with a new file in a directory that is there: %d %q", code, out)
	}
	if _, err := os.Stat(fresh); err == nil {
		t.Error("check-config created the access log")
	}
}

// The listener's SO_REUSEPORT group (a socket per event loop) does not
// let a second stickyd share the port: it still gets "address already in
// use", while the first one serves on.
func TestSecondInstanceOnTheSamePortRefused(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag())
	code, _, stderr := runStickyd(t, t.TempDir(), nil, "", "--listen", p.addr, "--backend", b.Addr())
	if code != 1 || !strings.Contains(stderr, "address already in use") {
		t.Errorf("second instance on %s: exit %d, stderr %q", p.addr, code, stderr)
	}
	c := testkit.Dial(t, "127.0.5.1", p.addr)
	if name, _, _ := testkit.Greeting(t, c); name != "only" {
		t.Errorf("first instance after the attempt: greeting from %q", name)
	}
	c.Close()
}
