package reaper

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// The tests make the test process a subreaper, as stickyd makes itself:
// the orphans of the children they start come back to it.
func TestMain(m *testing.M) {
	if err := Subreaper(); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// waitFor polls cond every 10 ms for at most 10 s (a hang guard).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func runReaper(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, zap.NewNop()); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func zombiesNow(t *testing.T) []zombie {
	t.Helper()
	z, err := zombieChildren(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// Children that exit while leaving children of their own: every orphan is
// collected, and every child's own Wait still gets its exit code (the
// reaper never takes a registered child's status), with starts, exits and
// collections all overlapping.
func TestOrphansCollectedOwnExitCodesKept(t *testing.T) {
	Collect(os.Getpid(), zap.NewNop()) // what earlier tests left
	before := Reaped()
	runReaper(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			// sh leaves two sleeps behind; they exit after it, as orphans.
			cmd := exec.Command("sh", "-c", "sleep 0.1 & sleep 0.2 & exit 7")
			if err := Start(cmd); err != nil {
				errs <- err
				return
			}
			err := Wait(cmd)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 7 {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a child's own Wait: %v, want exit status 7", err)
	}
	waitFor(t, "every orphan collected", func() bool { return Reaped()-before == 2*n })
	if z := zombiesNow(t); len(z) != 0 {
		t.Fatalf("zombies left: %v", z)
	}
}

// A registered child that has exited is left for its own Wait.
func TestCollectLeavesRegisteredChild(t *testing.T) {
	cmd := exec.Command("true")
	if err := Start(cmd); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	waitFor(t, "the child to exit", func() bool {
		st, err := readStat(pid)
		return err == nil && st.state == 'Z'
	})
	if n := Collect(os.Getpid(), zap.NewNop()); n != 0 {
		t.Fatalf("Collect took %d processes, want 0", n)
	}
	if err := Wait(cmd); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if _, ok := owned[pid]; ok {
		t.Fatal("the child is still registered after its Wait")
	}
}

// Group lists the live members of a process group, and /proc/PID/stat is
// read right when the command name holds spaces and parentheses.
func TestGroupAndOddCommandNames(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(t.TempDir(), "a) b (c")
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(odd, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `"$0" 5 & sleep 5 & wait`, odd)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := Start(cmd); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = Wait(cmd)
		// The sleeps, orphaned, are the test process's to collect.
		waitFor(t, "the orphans collected", func() bool {
			Collect(os.Getpid(), zap.NewNop())
			g, err := Group(cmd.Process.Pid)
			return err == nil && len(zombiesNow(t)) == 0 && len(g) == 0
		})
	}()
	var g map[int]string
	waitFor(t, "three processes in the group", func() bool {
		g, err = Group(cmd.Process.Pid)
		return err == nil && len(g) == 3
	})
	names := map[string]int{}
	for _, c := range g {
		names[c]++
	}
	if names["sh"] != 1 || names["sleep"] != 1 || names["a) b (c"] != 1 {
		t.Fatalf("group %v: want sh, sleep and %q", g, "a) b (c")
	}
	if g, err := Group(1 << 30); err != nil || len(g) != 0 {
		t.Fatalf("a group that does not exist: %v", g)
	}
}
