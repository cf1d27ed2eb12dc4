package integration_test

// workers.count = "auto" inside a container's CPU limit: a real cgroup
// CPU quota (cgroup v1's cpu controller, or v2's cpu.max) on the stickyd
// process, not the host's CPU count.

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// quotaCgroup makes a cgroup with a CPU quota of quota/period and returns
// its cgroup.procs file. It skips the test where the machine has no
// writable cpu controller (not root, or a container without one): unlike
// HAProxy or nginx, test.sh cannot install one.
func quotaCgroup(t *testing.T, quota, period int) string {
	t.Helper()
	name := fmt.Sprintf("stickyd-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	try := func() (string, error) {
		root := "/sys/fs/cgroup/cpu" // cgroup v1
		if _, err := os.Stat(root + "/cpu.cfs_quota_us"); err == nil {
			dir := filepath.Join(root, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				return "", err
			}
			t.Cleanup(func() { removeCgroup(t, dir) })
			if err := os.WriteFile(dir+"/cpu.cfs_period_us", []byte(fmt.Sprint(period)), 0o644); err != nil {
				return "", err
			}
			return dir, os.WriteFile(dir+"/cpu.cfs_quota_us", []byte(fmt.Sprint(quota)), 0o644)
		}
		root = "/sys/fs/cgroup" // cgroup v2: a child of the root, where cpu can be enabled
		if b, _ := os.ReadFile(root + "/cgroup.subtree_control"); !strings.Contains(string(b), "cpu") {
			if err := os.WriteFile(root+"/cgroup.subtree_control", []byte("+cpu"), 0o644); err != nil {
				return "", err
			}
		}
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return "", err
		}
		t.Cleanup(func() { removeCgroup(t, dir) })
		return dir, os.WriteFile(dir+"/cpu.max", []byte(fmt.Sprintf("%d %d", quota, period)), 0o644)
	}
	dir, err := try()
	if err != nil {
		t.Skipf("no writable cgroup cpu controller: %v", err)
	}
	return dir + "/cgroup.procs"
}

// removeCgroup removes the cgroup dir once the processes in it (stickyd's
// workers, killed with it) have left.
func removeCgroup(t *testing.T, dir string) {
	testkit.WaitFor(t, "the cgroup "+dir+" to empty", func() bool {
		err := os.Remove(dir)
		return err == nil || os.IsNotExist(err)
	})
}

// runInCgroup runs stickyd with args inside the cgroup of procs (a shell
// moves itself there, then execs stickyd), with extra environment env,
// and returns its exit code and output.
func runInCgroup(t *testing.T, procs string, env []string, args ...string) (int, string) {
	t.Helper()
	code, out, stderr := runCommand(t, "", env, "", append([]string{"sh", "-c", `echo $$ > "$0" && exec "$@"`, procs, stickydBin}, args...)...)
	return code, out + stderr
}

// TestWorkersAutoFollowsCPUQuota: under a CPU limit of half a CPU, one and
// a half, or more than the machine has, --workers auto means the limit
// rounded down (at least 1), at most the CPUs: in check-config, lookup
// and when serving. A GOMAXPROCS variable does not change it.
func TestWorkersAutoFollowsCPUQuota(t *testing.T) {
	file := writeFile(t, t.TempDir(), "w.toml", fmt.Sprintf("listen = %q\n", testkit.FreePort(t)))
	ncpu := runtime.NumCPU()
	for _, tc := range []struct {
		quota int // per 100 ms
		env   []string
		want  int
	}{
		{50_000, nil, 1},
		{150_000, nil, 1},
		{50_000, []string{"GOMAXPROCS=" + fmt.Sprint(ncpu+3)}, 1},
		{100_000 * (ncpu + 1), nil, ncpu},
	} {
		procs := quotaCgroup(t, tc.quota, 100_000)
		name := fmt.Sprintf("quota %.1f CPUs %v", float64(tc.quota)/100_000, tc.env)
		code, out := runInCgroup(t, procs, tc.env, "check-config", "--workers", "auto", file, "--", "stickyd", "hello-worker")
		if want := fmt.Sprintf("%d workers", tc.want); code != 0 || !strings.Contains(out, want) {
			t.Errorf("%s: check-config exit %d %q, want %q", name, code, out, want)
		}
		// lookup routes over the same workers: with one, every IP goes to worker-0.
		code, out = runInCgroup(t, procs, tc.env, "lookup", "--workers", "auto", "198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4")
		seen := map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			_, w, _ := strings.Cut(line, " ")
			seen[w] = true
		}
		if code != 0 || tc.want == 1 && (len(seen) != 1 || !seen["worker-0"]) {
			t.Errorf("%s: lookup exit %d %q, want every IP on worker-0", name, code, out)
		}
	}

	// Serving: the supervisor starts as many workers as check-config said.
	procs := quotaCgroup(t, 50_000, 100_000)
	addr := testkit.FreePort(t)
	u := startUpstream(t, addr, "sh", "-c", `echo $$ > "$0" && exec "$@"`, procs, stickydBin,
		"--listen", addr, "--log-format", "json", "--workers", "auto", "--", "stickyd", "hello-worker")
	testkit.WaitFor(t, "the worker addresses logged", func() bool { return strings.Contains(u.out.String(), `"worker addresses"`) })
	for _, line := range strings.Split(u.out.String(), "\n") {
		if strings.Contains(line, `"worker addresses"`) && strings.Count(line, "127.0.0.1:") != 1 {
			t.Errorf("under half a CPU, --workers auto started: %s", line)
		}
	}
}
