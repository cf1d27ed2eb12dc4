package integration_test

// stickyd as a container's entrypoint (PID 1) launching Node workers: the
// image of deploy/node/Dockerfile, and apps started through a wrapper (npm
// start). No Docker engine runs here: the image's file tree is made from
// the Dockerfile's own lines, and PID 1 is that of a new PID namespace
// (unshare), as a container runtime makes it.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// pidNamespace runs its arguments as PID 1 of a new PID namespace with its
// own /proc, as a container's entrypoint runs; the namespace dies with it.
var pidNamespace = []string{"unshare", "--pid", "--fork", "--mount-proc", "--kill-child"}

func needPIDNamespace(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(pidNamespace[0], append(pidNamespace[1:], "true")...).CombinedOutput(); err != nil {
		t.Skipf("cannot make a PID namespace here (%v: %s): the test needs root (CI runs as root)", err, out)
	}
}

// nsInit returns the host pid of the PID 1 that p (unshare) started: the
// stickyd to signal (unshare passes no signal on).
func nsInit(t *testing.T, p *proc) int {
	t.Helper()
	var pid int
	testkit.WaitFor(t, "the namespace's PID 1", func() bool {
		if kids := liveProcs(p.cmd.Process.Pid, nil); len(kids) == 1 {
			pid = kids[0]
			return true
		}
		return false
	})
	return pid
}

// zombieChildren lists the children of ppid that have exited and that
// nobody has collected.
func zombieChildren(ppid int) []int {
	return procsWhere(func(zombie bool, parent, _ int) bool { return zombie && parent == ppid })
}

// imageTree is the file tree that deploy/node/Dockerfile's final stage
// makes, built here under root from its lines: the stickyd the tests built
// where the build stage leaves its binary, each COPY of the repository's
// files, and each `npm ci` as a link to the node_modules that test.sh
// installed in the directory copied from.
type imageTree struct {
	root       string
	workdir    string   // the last WORKDIR, in the image
	entrypoint []string // ENTRYPOINT
	env        []string // ENV
	user       string
	stopSignal string
	expose     []string
	copied     []string // image paths of the files copied from the repository
}

// host returns where image path p is in the tree.
func (img *imageTree) host(p string) string { return filepath.Join(img.root, p) }

func buildImageTree(t *testing.T, dockerfile string) *imageTree {
	t.Helper()
	src, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	b := &imageBuilder{t: t, file: dockerfile, img: &imageTree{root: t.TempDir()},
		workdir: map[string]string{}, from: map[string]string{}}
	finals := 0
	for _, line := range strings.Split(strings.ReplaceAll(string(src), "\\\n", " "), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		instr, args := strings.ToUpper(instr), opsWords(rest)
		switch {
		case instr == "FROM":
			b.stage = ""
			if len(args) == 3 && strings.EqualFold(args[1], "AS") {
				b.stage = args[2]
			} else {
				finals++
			}
		case b.stage != "":
			b.buildStep(instr, args)
		default:
			b.finalStep(instr, rest, args)
		}
	}
	if finals != 1 || b.builtAt == "" {
		t.Fatalf("%s: want one build stage with go build -o and one final stage (got %d final, binary at %q)", dockerfile, finals, b.builtAt)
	}
	return b.img
}

// imageBuilder follows a Dockerfile's stages for buildImageTree.
type imageBuilder struct {
	t                   *testing.T
	file                string
	img                 *imageTree
	stage               string            // the current stage's name; "" for the final one
	workdir             map[string]string // per stage
	builtAt, buildStage string            // where the build stage leaves the binary
	from                map[string]string // image dir -> the repository dir its files came from
}

// abs resolves image path p against the current stage's WORKDIR.
func (b *imageBuilder) abs(p string) string {
	if path.IsAbs(p) {
		return p
	}
	return path.Join(b.workdir[b.stage], p)
}

// buildStep follows a build stage: its WORKDIR and its go build -o.
func (b *imageBuilder) buildStep(instr string, args []string) {
	switch instr {
	case "WORKDIR":
		b.workdir[b.stage] = b.abs(args[0])
	case "RUN":
		for i, w := range args {
			if w == "-o" && i+1 < len(args) && slices.Contains(args, "build") {
				b.builtAt, b.buildStage = b.abs(args[i+1]), b.stage
			}
		}
	}
}

// finalStep carries out one instruction of the final stage in the tree.
func (b *imageBuilder) finalStep(instr, rest string, args []string) {
	t, img := b.t, b.img
	switch instr {
	case "WORKDIR":
		b.workdir[b.stage] = b.abs(args[0])
		img.workdir = b.workdir[b.stage]
	case "COPY":
		b.copyStep(args)
	case "RUN":
		b.npmCI(rest)
	case "ENV":
		img.env = append(img.env, args...)
	case "USER":
		img.user = args[0]
	case "STOPSIGNAL":
		img.stopSignal = args[0]
	case "EXPOSE":
		img.expose = args
	case "ENTRYPOINT":
		if err := json.Unmarshal([]byte(rest), &img.entrypoint); err != nil {
			t.Fatalf("%s: ENTRYPOINT %s: %v (the exec form, so that stickyd is PID 1)", b.file, rest, err)
		}
	default:
		t.Fatalf("%s: %s: the test does not know this instruction", b.file, instr)
	}
}

// copyStep copies the binary the build stage made (COPY --from), or the
// repository's files, into the tree.
func (b *imageBuilder) copyStep(args []string) {
	t := b.t
	if f, ok := strings.CutPrefix(args[0], "--from="); ok {
		if f != b.buildStage || len(args) != 3 || args[1] != b.builtAt {
			t.Fatalf("%s: COPY %v: the build stage %q leaves the binary at %s", b.file, args, b.buildStage, b.builtAt)
		}
		b.put(stickydBin, args[2])
		return
	}
	srcs, dst := args[:len(args)-1], b.abs(args[len(args)-1])
	intoDir := strings.HasSuffix(args[len(args)-1], "/")
	if len(srcs) > 1 && !intoDir {
		t.Fatalf("%s: COPY %v: several files to one without a trailing /", b.file, args)
	}
	for _, s := range srcs {
		to := dst
		if intoDir {
			to = path.Join(dst, path.Base(s))
		}
		b.put(filepath.Join("..", s), to)
		b.from[path.Dir(to)] = path.Dir(s)
		b.img.copied = append(b.img.copied, to)
	}
}

// put copies the file at from to image path to.
func (b *imageBuilder) put(from, to string) {
	data, err := os.ReadFile(from)
	if err != nil {
		b.t.Fatalf("%s: COPY %v", b.file, err)
	}
	to = b.img.host(to)
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		b.t.Fatal(err)
	}
}

// npmCI stands for `cd DIR && npm ci --omit=dev`: DIR's node_modules is a
// link to those test.sh installed where DIR's files came from.
func (b *imageBuilder) npmCI(run string) {
	t := b.t
	m := regexp.MustCompile(`^cd (\S+) && npm ci --omit=dev( |$)`).FindStringSubmatch(run)
	if m == nil {
		t.Fatalf("%s: RUN %q: the test knows only `cd DIR && npm ci --omit=dev` in the final stage", b.file, run)
	}
	dir := b.abs(m[1])
	repoDir, ok := b.from[dir]
	if !ok {
		t.Fatalf("%s: npm ci in %s, where nothing was copied", b.file, dir)
	}
	for _, f := range []string{"package.json", "package-lock.json"} {
		if _, err := os.Stat(b.img.host(path.Join(dir, f))); err != nil {
			t.Fatalf("%s: npm ci in %s without %s copied first", b.file, dir, f)
		}
	}
	modules, err := filepath.Abs(filepath.Join("..", repoDir, "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(modules, b.img.host(path.Join(dir, "node_modules"))); err != nil {
		t.Fatal(err)
	}
}

// procUID returns the real uid of pid, from /proc/PID/status.
func procUID(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			return f[1]
		}
	}
	t.Fatalf("pid %d: no Uid line", pid)
	return ""
}

// runAs returns the command that runs its arguments as the image's USER
// (the node images' "node" is uid 1000), having made the tree readable to
// it: t.TempDir makes its directories for root alone.
func (img *imageTree) runAs(t *testing.T) []string {
	t.Helper()
	uid := map[string]string{"node": "1000"}[img.user]
	if uid == "" {
		if _, err := strconv.Atoi(img.user); err != nil {
			t.Fatalf("USER %q: the test knows node (1000) and numeric ids", img.user)
		}
		uid = img.user
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
	for d := img.root; d != filepath.Dir(d) && strings.HasPrefix(d, os.TempDir()) && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return []string{"setpriv", "--reuid=" + uid, "--regid=" + uid, "--clear-groups"}
}

// command returns the ENTRYPOINT as it runs here: the program found on
// the image's /usr/local/bin, image paths among the arguments made paths
// in the tree.
func (img *imageTree) command(t *testing.T) []string {
	t.Helper()
	if len(img.entrypoint) == 0 {
		t.Fatal("no ENTRYPOINT")
	}
	prog := img.entrypoint[0]
	if !path.IsAbs(prog) {
		prog = "/usr/local/bin/" + prog
	}
	argv := []string{img.host(prog)}
	for _, a := range img.entrypoint[1:] {
		if path.IsAbs(a) {
			if _, err := os.Stat(img.host(a)); err != nil {
				t.Fatalf("ENTRYPOINT names %s, which the image lacks", a)
			}
			a = img.host(a)
		}
		argv = append(argv, a)
	}
	if _, err := os.Stat(argv[0]); err != nil {
		t.Fatalf("ENTRYPOINT %s: not in the image", img.entrypoint[0])
	}
	return argv
}

var requireCall = regexp.MustCompile(`require\(\s*['"]([^'"]+)['"]\s*\)`)

// checkProductionDeps: npm ci --omit=dev installs "dependencies" only, so
// every package that a copied .js file requires must be one of those of
// its package.json (here the links hold the dev ones too).
func (img *imageTree) checkProductionDeps(t *testing.T) {
	t.Helper()
	out, err := exec.Command("node", "-p", "require('module').builtinModules.join(' ')").Output()
	if err != nil {
		t.Fatal(err)
	}
	builtin := map[string]bool{}
	for _, m := range strings.Fields(string(out)) {
		builtin[m] = true
	}
	for _, f := range img.copied {
		if !strings.HasSuffix(f, ".js") {
			continue
		}
		src, err := os.ReadFile(img.host(f))
		if err != nil {
			t.Fatal(err)
		}
		var pkg struct{ Dependencies map[string]string }
		b, err := os.ReadFile(img.host(path.Join(path.Dir(f), "package.json")))
		if err == nil {
			err = json.Unmarshal(b, &pkg)
		}
		if err != nil {
			t.Fatalf("%s: its package.json: %v", f, err)
		}
		var code strings.Builder // comments left out
		for _, l := range strings.Split(string(src), "\n") {
			if t := strings.TrimSpace(l); !strings.HasPrefix(t, "//") && !strings.HasPrefix(t, "*") {
				code.WriteString(l + "\n")
			}
		}
		for _, m := range requireCall.FindAllStringSubmatch(code.String(), -1) {
			name := m[1]
			if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "node:") || builtin[name] {
				continue
			}
			parts := strings.SplitN(name, "/", 3)
			name = parts[0]
			if strings.HasPrefix(name, "@") && len(parts) > 1 {
				name += "/" + parts[1]
			}
			if _, ok := pkg.Dependencies[name]; !ok {
				t.Errorf("%s requires %q, which is not in its package.json's dependencies: npm ci --omit=dev leaves it out of the image", f, name)
			}
		}
	}
}

// TestNodeImageAsPID1 runs deploy/node/Dockerfile's image as a container
// would: its entrypoint as PID 1, in the image's working directory, with
// its environment; 4 Node workers (the image says count = "auto", one per
// CPU of the container's limit) of examples/socketio. 200 real socket.io
// clients each reach their home worker and keep it through the websocket
// upgrade; SIGUSR2, which would end the container, is refused with the
// reason and stickyd serves on; SIGTERM stops every worker and exits 0.
func TestNodeImageAsPID1(t *testing.T) {
	example := socketIOExample(t)
	needPIDNamespace(t)
	img := buildImageTree(t, "../deploy/node/Dockerfile")
	if img.user == "" || img.user == "root" || strings.HasPrefix(img.user, "0") {
		t.Errorf("USER %q: the image should not run as root", img.user)
	}
	if img.stopSignal != "SIGTERM" || !slices.Contains(img.expose, "3000") {
		t.Errorf("STOPSIGNAL %q, EXPOSE %v: want SIGTERM and 3000", img.stopSignal, img.expose)
	}
	img.checkProductionDeps(t)
	argv := img.command(t)
	cfg := argv[len(argv)-1]
	if out, err := exec.Command(argv[0], "check-config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("the image's config: %v\n%s", err, out)
	}

	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	env := append(append(os.Environ(), img.env...), "PATH="+img.host("/usr/local/bin")+":"+os.Getenv("PATH"))
	// As the image's USER, from its first instruction (setpriv execs:
	// stickyd is PID 1 all the same).
	asUser := img.runAs(t)
	argv = append(append(append(append([]string(nil), pidNamespace...), asUser...), argv...),
		"--listen", addr, "--admin", adm, "--log-format", "json", "--workers", strconv.Itoa(sioWorkers))
	p := launchArgv(t, argv, img.host(img.workdir), env, addr)
	init := nsInit(t, p)
	pids := waitWorkersReady(t, p, sioWorkers) // the namespace's pids, as the workers see their own
	for _, pid := range append(liveProcs(init, nil), init) {
		if uid := procUID(t, pid); uid != strings.TrimPrefix(asUser[1], "--reuid=") {
			t.Errorf("pid %d runs as uid %s, want the image's USER %s", pid, uid, img.user)
		}
	}
	ips := testkit.ClientIPs(sioClients)
	homes := lookupHomes(t, cfg, sioWorkers, ips)
	run := startSIOClients(t, example, "http://"+addr, "sticky", ips, 45*time.Second)
	ready := run.next(t, "ready", 30*time.Second)
	perWorker := checkSticky(t, ready, homes, pids)
	t.Logf("as PID 1: %d clients welcomed, upgraded and acked by their home workers in %d ms; per worker %v",
		len(ready.Clients), ready.Ms, perWorker)

	if err := syscall.Kill(init, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "SIGUSR2 refused", func() bool { return opsLogged(p, `"msg":"SIGUSR2 ignored: the old process's exit`) })
	if e := logsOf[map[string]any](p, "SIGUSR2 ignored: the old process's exit would end the container, and the new process with it"); len(e) != 1 ||
		e[0]["reason"] != "stickyd is PID 1 (a container's entrypoint)" {
		t.Errorf("SIGUSR2 refusal: %v", e)
	}
	if body := httpGetFrom(t, ips[1], addr); !strings.Contains(body, "says hello to "+ips[1]) {
		t.Errorf("after SIGUSR2: %q", body)
	}
	run.cmd.Process.Kill() // the clients go; the drain has nothing to wait for
	if err := syscall.Kill(init, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testkit.Await(t, p.exited, "stickyd (PID 1) did not exit after SIGTERM")
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if n := len(p.logEntries("worker stopped")); n != sioWorkers {
		t.Errorf("%d workers logged as stopped, want %d", n, sioWorkers)
	}
}

// npmApp makes a Node app that runs as `npm start` (whose script starts
// testdata/rolling-app.js) and returns a config launching n of it.
func npmApp(t *testing.T, n, base int) (cfg string, deploy func(v string)) {
	t.Helper()
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm is not installed (./test.sh installs it)")
	}
	dir := t.TempDir()
	pkg := fmt.Sprintf(`{"name": "npm-start-app", "version": "1.0.0", "private": true, "scripts": {"start": "node %s"}}`, rollingAppPath(t))
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(pkg), 0o600); err != nil {
		t.Fatal(err)
	}
	return rollingAppAs(t, rollingAppSetup{n: n, base: base, command: `["npm", "start"]`, dir: dir, stop: "10s",
		env: "npm_config_update_notifier = \"false\"\n"})
}

// TestWorkersBehindNpmStart: workers started as `npm start`, the usual
// way to start a Node app, and one that exits at once on SIGTERM while its
// node (which gets the SIGTERM too) finishes its requests. In a rolling
// restart the old worker's node completes a request in flight (it was cut
// when stickyd killed the group once npm had exited), then exits, an
// orphan that stickyd collects: as the workers' subreaper, and as PID 1 in
// a container. A worker's npm killed alone (the OOM killer's pick, say)
// leaves its node behind: it is killed and collected, and the slot
// restarts. No zombie is left at any point.
func TestWorkersBehindNpmStart(t *testing.T) {
	for _, mode := range []string{"subreaper", "pid1"} {
		t.Run(mode, func(t *testing.T) {
			var wrap []string
			if mode == "pid1" {
				needPIDNamespace(t)
				wrap = pidNamespace
			}
			testNpmStart(t, wrap)
		})
	}
}

func testNpmStart(t *testing.T, wrap []string) {
	const n = 2
	base := testkit.FreePortBase(t, 2*n, workerPortsLo, workerPortsHi)
	cfg, deploy := npmApp(t, n, base)
	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	p := launchVia(t, wrap, t.TempDir(), addr, "--listen", addr, "--log-format", "json", "--config", cfg, "--admin", adm)
	stickyd := p.cmd.Process.Pid
	if wrap != nil {
		stickyd = nsInit(t, p)
	}
	waitWorkersReady(t, p, n)
	ips := testkit.ClientIPs(8)

	// Long enough to be in flight when its worker, either slot, is stopped.
	slow := slowGet(ips[0], addr, "/slow?ms=6000", answeredBy("v1", 0))
	testkit.WaitFor(t, "the slow request at its v1 worker", func() bool {
		var active int64
		for _, b := range opsBackends(t, adm) {
			active += b.Active
		}
		return active == 1
	})
	deploy("v2")
	if err := syscall.Kill(stickyd, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if done := rollingDone(t, p, 1); !strings.Contains(done, `"replaced":2`) {
		t.Fatalf("rolling restart ended with %s, want 2 replaced", done)
	}
	if err := testkit.Await(t, slow, "the slow request did not end"); err != nil {
		t.Errorf("a request in flight on an npm start worker that was replaced: %v", err)
	}
	// Each old npm exited on SIGTERM; its node drained, then exited as an
	// orphan of stickyd.
	testkit.WaitFor(t, "the old nodes collected", func() bool {
		return opsMetric(t, adm, "stickyd_orphans_reaped_total") >= n && len(zombieChildren(stickyd)) == 0
	})
	for _, ip := range ips {
		if a, err := rollingGet(ip, addr, "/"); err != nil || a.version != "v2" {
			t.Errorf("from %s after the rolling restart: %+v %v", ip, a, err)
		}
	}

	// The wrapper alone dies: its node is killed with its group, collected,
	// and the slot restarts.
	npms := liveProcs(stickyd, nil)
	if len(npms) != n {
		t.Fatalf("stickyd's children %v, want %d npm processes", npms, n)
	}
	reaped := opsMetric(t, adm, "stickyd_orphans_reaped_total")
	restartsBefore := len(p.logEntries("worker ready"))
	if err := syscall.Kill(npms[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the slot restarted, its node collected", func() bool {
		return len(p.logEntries("worker ready")) > restartsBefore &&
			opsMetric(t, adm, "stickyd_orphans_reaped_total") > reaped && len(zombieChildren(stickyd)) == 0
	})
	if left := liveProcs(-1, map[int]bool{npms[0]: true}); len(left) != 0 {
		t.Errorf("processes left in the killed npm's group: %v", left)
	}

	groups := map[int]bool{}
	for _, pid := range liveProcs(stickyd, nil) {
		groups[pid] = true
	}
	if err := syscall.Kill(stickyd, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testkit.Await(t, p.exited, "stickyd did not exit after SIGTERM")
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if left := liveProcs(-1, groups); len(left) != 0 {
		t.Errorf("processes left in the workers' groups: %v", left)
	}
	if e := logsIn[map[string]any](p.stderr.String(), "worker exited, but processes of its group did not exit within stop_timeout of SIGTERM; killing them"); len(e) != 0 {
		t.Errorf("a node was killed instead of drained: %v", e)
	}
}

// TestUpgradeRefusedUnderContainerInit: stickyd started by a container's
// init (docker run --init runs tini) is not PID 1, but its exit ends the
// container all the same: SIGUSR2 is refused with that reason, and
// stickyd serves on. The init here is a shell installed as "tini", as
// Docker installs tini as docker-init.
func TestUpgradeRefusedUnderContainerInit(t *testing.T) {
	needPIDNamespace(t)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sh)
	if err != nil {
		t.Fatal(err)
	}
	tini := filepath.Join(t.TempDir(), "tini")
	if err := os.WriteFile(tini, b, 0o755); err != nil {
		t.Fatal(err)
	}
	be := testkit.StartBackend(t, "app")
	addr := testkit.FreePort(t)
	// "; exit $?" keeps the shell as PID 1, the parent, rather than exec.
	argv := append(append([]string(nil), pidNamespace...), tini, "-c", `"$0" "$@"; exit $?`,
		stickydBin, "--listen", addr, "--log-format", "json", "--backend", be.Flag())
	p := launchArgv(t, argv, t.TempDir(), nil, addr)
	init := nsInit(t, p)
	kids := liveProcs(init, nil)
	if len(kids) != 1 {
		t.Fatalf("the init's children: %v", kids)
	}
	if err := syscall.Kill(kids[0], syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "SIGUSR2 refused", func() bool { return opsLogged(p, `"msg":"SIGUSR2 ignored: the old process's exit`) })
	if e := logsOf[map[string]any](p, "SIGUSR2 ignored: the old process's exit would end the container, and the new process with it"); len(e) != 1 ||
		e[0]["reason"] != "stickyd is the child of tini, a container's init (PID 1), which exits when stickyd does" {
		t.Errorf("SIGUSR2 refusal: %v", e)
	}
	if opsLogged(p, `"msg":"upgrade`) {
		t.Errorf("an upgrade started:\n%s", p.stderr.String())
	}
	c := testkit.Dial(t, "127.0.0.1", addr)
	br := bufio.NewReader(c)
	if greeting, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(greeting, "app ") {
		t.Fatalf("after SIGUSR2: greeting %q %v", greeting, err)
	}
	opsEcho(t, c, br, "still serving")
	c.Close()
	if err := syscall.Kill(kids[0], syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testkit.Await(t, p.exited, "stickyd did not exit after SIGTERM")
}
