package integration_test

// The Docker build and the deploy configs.

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stickyd/stickyd/config"
)

// opsWords splits a shell command line into words, honouring double and
// single quotes (enough for a Dockerfile RUN line and test.sh).
func opsWords(s string) []string {
	var words []string
	var cur strings.Builder
	var quote rune
	inWord := false
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// opsBuildLine finds the `go build` command in a file: its environment
// assignments and its argv.
func opsBuildLine(t *testing.T, path, prefix string) (env, argv []string) {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(src), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix)
		if !ok {
			continue
		}
		words := opsWords(rest)
		var assigns []string
		for len(words) > 0 && strings.Contains(words[0], "=") {
			assigns, words = append(assigns, words[0]), words[1:]
		}
		if len(words) >= 2 && words[0] == "go" && words[1] == "build" {
			return assigns, words
		}
	}
	t.Fatalf("%s: no %q line with go build", path, prefix)
	return nil, nil
}

// The Dockerfile builds what the tests build (test.sh: go build -o stickyd
// .), only static and trimmed; built with exactly its command and
// environment, the binary has no interpreter and no shared library.
func TestDockerfileBuildsStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("a full build: skipped with -short")
	}
	env, argv := opsBuildLine(t, "../Dockerfile", "RUN ")
	_, testArgv := opsBuildLine(t, "../test.sh", "")
	if want := []string{"go", "build", "-o", "stickyd", "."}; !slices.Equal(testArgv, want) {
		t.Fatalf("test.sh builds with %q, want %q", testArgv, want)
	}
	if !slices.Contains(env, "CGO_ENABLED=0") {
		t.Errorf("Dockerfile build environment %q lacks CGO_ENABLED=0", env)
	}
	// Same command as test.sh, plus only flags that do not change behaviour.
	var rest []string
	for i := 2; i < len(argv); i++ {
		switch argv[i] {
		case "-trimpath":
		case "-ldflags":
			if i+1 >= len(argv) || strings.Trim(argv[i+1], "-sw ") != "" {
				t.Errorf("Dockerfile -ldflags %q: only -s -w expected", argv[i+1:])
			}
			i++
		default:
			rest = append(rest, argv[i])
		}
	}
	if !slices.Equal(argv[:2], []string{"go", "build"}) || !slices.Equal(rest, testArgv[2:]) {
		t.Fatalf("Dockerfile builds with %q, test.sh with %q", argv, testArgv)
	}

	out := filepath.Join(t.TempDir(), "stickyd")
	build := slices.Clone(argv)
	build[slices.Index(build, "-o")+1] = out // the only change: where the binary goes
	cmd := exec.Command(build[0], build[1:]...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), env...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v\n%s", strings.Join(env, " "), build, err, msg)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("binary has a %v program header: not static", p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("binary needs %q (%v)", libs, err)
	}
	if v, err := exec.Command(out, "version").Output(); err != nil || !strings.HasPrefix(string(v), "stickyd ") {
		t.Errorf("the static binary does not run: %q %v", v, err)
	}
}

// The image runs as non-root, reads /etc/stickyd/config.toml, exposes the
// proxy and admin ports and stops on SIGTERM.
func TestDockerfileRuntimeStage(t *testing.T) {
	src, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages := strings.Split(string(src), "\nFROM ")
	final := stages[len(stages)-1]
	has := func(re string) bool { return strings.Contains(final, re) }
	for _, want := range []string{"STOPSIGNAL SIGTERM", "/etc/stickyd/config.toml", "EXPOSE 3000 9000"} {
		if !has(want) {
			t.Errorf("final stage lacks %q", want)
		}
	}
	user := ""
	for _, line := range strings.Split(final, "\n") {
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), "USER "); ok {
			user = u
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0") {
		t.Errorf("final stage runs as %q, want a non-root user", user)
	}
}

// The stickyd configs under deploy/ are valid, and so is the HAProxy
// config (when haproxy is installed).
func TestOpsDeployConfigsValid(t *testing.T) {
	tomls, _ := filepath.Glob("../deploy/*/*.toml")
	if len(tomls) < 2 {
		t.Fatalf("deploy configs: %v", tomls)
	}
	for _, path := range tomls {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(f)
		f.Close()
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
	k8s, err := os.ReadFile("../deploy/kubernetes/stickyd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`service.beta.kubernetes.io/aws-load-balancer-type: "nlb"`,
		`service.beta.kubernetes.io/aws-load-balancer-proxy-protocol: "*"`,
		"type: LoadBalancer",
	} {
		if !bytes.Contains(k8s, []byte(want)) {
			t.Errorf("stickyd.yaml lacks %q", want)
		}
	}
	// Both bind the admin API beyond loopback: both give it a token.
	for path, want := range map[string]string{
		"../deploy/kubernetes/stickyd.yaml":    "name: STICKYD_ADMIN_TOKEN",
		"../deploy/compose/docker-compose.yml": "STICKYD_ADMIN_TOKEN: ${STICKYD_ADMIN_TOKEN:?",
	} {
		if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte(want)) {
			t.Errorf("%s lacks %q: its admin API binds beyond loopback without a token", path, want)
		}
	}
	if app, _ := os.ReadFile("../deploy/kubernetes/app.yaml"); !bytes.Contains(app, []byte("clusterIP: None")) {
		t.Error("app.yaml: the workers' Service is not headless")
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Log("haproxy not installed: its config is not checked")
		return
	}
	if out, err := exec.Command(haproxy, "-c", "-f", "../deploy/compose/haproxy.cfg").CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
}

// deploy/systemd/stickyd.service is a unit systemd accepts, without a
// warning (systemd-analyze verify, with its ExecStart pointed at this
// build), and keeps what stickyd relies on under systemd: Type=notify,
// NotifyAccess=all for the new main process of an upgrade, KillMode=mixed
// so that SIGTERM reaches stickyd alone and the workers outlive the drain.
func TestSystemdUnitValid(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze")
	unit, err := os.ReadFile("../deploy/systemd/stickyd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nType=notify\n", "\nNotifyAccess=all\n", "\nKillMode=mixed\n",
		"\nExecReload=/bin/kill -HUP $MAINPID\n", "\nExecStart=/usr/local/bin/stickyd "} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("stickyd.service lacks %q", strings.TrimSpace(want))
		}
	}
	path := filepath.Join(t.TempDir(), "stickyd.service")
	if err := os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/stickyd"), []byte(stickydBin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("stickyd.service")) {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
