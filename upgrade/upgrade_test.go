package upgrade

import (
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// fakeOS is an OS whose environment is a map and whose Start runs a fake
// child: a goroutine given copies of the files, as a real child inherits
// them, that behaves as child says.
type fakeOS struct {
	mu      sync.Mutex
	env     map[string]string
	started [][]string // env of each child
	child   func(env []string, files []*os.File, killed <-chan struct{})
	adopted map[uintptr]string
	ready   *os.File // returned by NewFile
}

func newFakeOS() *fakeOS {
	return &fakeOS{env: map[string]string{"PATH": "/bin"}, adopted: map[uintptr]string{}}
}

func (f *fakeOS) Getenv(k string) string { f.mu.Lock(); defer f.mu.Unlock(); return f.env[k] }
func (f *fakeOS) Unsetenv(k string)      { f.mu.Lock(); defer f.mu.Unlock(); delete(f.env, k) }
func (f *fakeOS) Environ() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k, v := range f.env {
		out = append(out, k+"="+v)
	}
	return out
}
func (f *fakeOS) Executable() (string, error)              { return "/usr/bin/stickyd", nil }
func (f *fakeOS) Args() []string                           { return []string{"--listen", ":3000"} }
func (f *fakeOS) NewFile(fd uintptr, name string) *os.File { return f.ready }
func (f *fakeOS) Dup(ln net.Listener) (*os.File, error)    { return ln.(*net.TCPListener).File() }

func (f *fakeOS) FileListener(fd uintptr, name string) (net.Listener, error) {
	f.adopted[fd] = name
	return net.Listen("tcp", "127.0.0.1:0")
}

func (f *fakeOS) Start(exe string, args, env []string, files []*os.File) (Process, error) {
	f.mu.Lock()
	f.started = append(f.started, env)
	f.mu.Unlock()
	var copies []*os.File
	for _, file := range files { // what the child inherits
		fd, err := syscall.Dup(int(file.Fd()))
		if err != nil {
			return nil, err
		}
		copies = append(copies, os.NewFile(uintptr(fd), file.Name()))
	}
	p := &fakeProcess{killed: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer closeAll(copies)
		f.child(env, copies, p.killed)
	}()
	return p, nil
}

type fakeProcess struct {
	once         sync.Once
	killed, done chan struct{}
}

func (p *fakeProcess) Pid() int    { return 4242 }
func (p *fakeProcess) Kill() error { p.once.Do(func() { close(p.killed) }); return nil }
func (p *fakeProcess) Wait() error { <-p.done; return nil }

// readyFile is the child's readiness pipe, named by STICKYD_READY_FD.
func readyFile(t *testing.T, env []string, files []*os.File) *os.File {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, EnvReady+"="); ok {
			n, _ := strconv.Atoi(v)
			return files[n-3]
		}
	}
	t.Error("no " + EnvReady + " in the child's environment")
	return nil
}

// The child gets the listeners at fd 3 onward, named in its environment
// (no stale variable of ours from the parent's), and the extra variables;
// Upgrade returns once it writes the readiness byte.
func TestUpgradeHandsOverAndWaitsForReady(t *testing.T) {
	fos := newFakeOS()
	fos.env[EnvName("listen")] = "9" // left over: must not reach the child
	fos.child = func(env []string, files []*os.File, _ <-chan struct{}) {
		if r := readyFile(t, env, files); r != nil {
			r.Write([]byte{1})
		}
	}
	u, err := New(Options{Names: []string{"listen", "admin"}, OS: fos})
	if err != nil {
		t.Fatal(err)
	}
	ln := testkit.Listen(t, "127.0.0.1:0")
	if err := u.Upgrade([]Listener{{Name: "listen", Listener: ln}, {Name: "admin"}}, []string{"STICKYD_ADMIN_TOKEN=t"}); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	env := fos.started[0]
	for _, want := range []string{"STICKYD_LISTEN_FD=3", "STICKYD_READY_FD=4", "STICKYD_ADMIN_TOKEN=t", "PATH=/bin"} {
		if !slices.Contains(env, want) {
			t.Errorf("child env %q lacks %s", env, want)
		}
	}
	if slices.Contains(env, "STICKYD_LISTEN_FD=9") || slices.ContainsFunc(env, func(kv string) bool {
		return strings.HasPrefix(kv, "STICKYD_ADMIN_FD=")
	}) {
		t.Errorf("child env %q has a stale or absent listener", env)
	}
}

// A child that exits before it is ready, or is not ready in time, fails
// the upgrade; the one that hangs is killed. Meanwhile a second Upgrade
// is refused with ErrInProgress.
func TestUpgradeFails(t *testing.T) {
	for _, tc := range []struct {
		name  string
		child func(env []string, files []*os.File, killed <-chan struct{})
		want  string
	}{
		{"exits", func([]string, []*os.File, <-chan struct{}) {}, "exited before it was ready"},
		{"hangs", func(_ []string, _ []*os.File, killed <-chan struct{}) {
			select {
			case <-killed:
			case <-time.After(testkit.Guard):
			}
		}, "not ready within"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fos := newFakeOS()
			fos.child = tc.child
			u, err := New(Options{Names: []string{"listen"}, OS: fos, Timeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- u.Upgrade(nil, nil) }()
			if err := testkit.Await(t, done, "Upgrade hangs"); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Upgrade = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestUpgradeInProgress(t *testing.T) {
	fos := newFakeOS()
	release := make(chan struct{})
	fos.child = func(env []string, files []*os.File, killed <-chan struct{}) {
		select {
		case <-release:
			readyFile(t, env, files).Write([]byte{1})
		case <-killed:
		}
	}
	u, _ := New(Options{OS: fos})
	done := make(chan error, 1)
	go func() { done <- u.Upgrade(nil, nil) }()
	testkit.WaitFor(t, "the child's start", func() bool {
		fos.mu.Lock()
		defer fos.mu.Unlock()
		return len(fos.started) > 0
	})
	if err := u.Upgrade(nil, nil); !errors.Is(err, ErrInProgress) {
		t.Errorf("second Upgrade = %v, want ErrInProgress", err)
	}
	close(release)
	if err := testkit.Await(t, done, "Upgrade hangs"); err != nil {
		t.Errorf("first Upgrade = %v", err)
	}
}

// The child's side: New adopts the named descriptors and removes the
// variables; Inherited hands each out once; Ready writes the byte the
// parent waits for; a bad descriptor is an error.
func TestNewAdoptsInherited(t *testing.T) {
	fos := newFakeOS()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fos.ready = w
	fos.env[EnvName("listen")], fos.env[EnvReady] = "3", "4"
	u, err := New(Options{Names: []string{"listen", "admin"}, OS: fos})
	if err != nil {
		t.Fatal(err)
	}
	if fos.adopted[3] != "listen" || len(fos.adopted) != 1 {
		t.Errorf("adopted %v, want fd 3 as listen", fos.adopted)
	}
	if len(fos.Environ()) != 1 {
		t.Errorf("environment after New: %q", fos.Environ())
	}
	ln := u.Inherited("listen")
	if ln == nil || u.Inherited("listen") != nil || u.Inherited("admin") != nil {
		t.Fatal("Inherited: want the listener once, and no admin")
	}
	if !u.Child() {
		t.Error("Child() = false in a process that inherited a listener (taken or not)")
	}
	if plain, err := New(Options{Names: []string{"listen"}, OS: newFakeOS()}); err != nil || plain.Child() {
		t.Errorf("a process started normally: Child() = %v, %v", plain != nil && plain.Child(), err)
	}
	ln.Close()
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	r.SetReadDeadline(time.Now().Add(testkit.Guard))
	var b [1]byte
	if n, _ := r.Read(b[:]); n != 1 {
		t.Error("the parent got no readiness byte")
	}
	fos.env[EnvName("listen")] = "x"
	if _, err := New(Options{Names: []string{"listen"}, OS: fos}); err == nil || !strings.Contains(err.Error(), "bad inherited listen") {
		t.Errorf("bad descriptor: %v", err)
	}
}

// A listener's SO_REUSEPORT group travels with it: the child gets every
// socket, named after a comma, and InheritedGroup hands out the rest once.
func TestUpgradeHandsOverAGroup(t *testing.T) {
	fos := newFakeOS()
	fos.child = func(env []string, files []*os.File, _ <-chan struct{}) {
		if r := readyFile(t, env, files); r != nil {
			r.Write([]byte{1})
		}
	}
	u, err := New(Options{Names: []string{"listen"}, OS: fos})
	if err != nil {
		t.Fatal(err)
	}
	ln, g1, g2 := testkit.Listen(t, "127.0.0.1:0"), testkit.Listen(t, "127.0.0.1:0"), testkit.Listen(t, "127.0.0.1:0")
	if err := u.Upgrade([]Listener{{Name: "listen", Listener: ln, Group: []net.Listener{g1, g2}}}, nil); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	for _, want := range []string{"STICKYD_LISTEN_FD=3,4,5", "STICKYD_READY_FD=6"} {
		if !slices.Contains(fos.started[0], want) {
			t.Errorf("child env %q lacks %s", fos.started[0], want)
		}
	}

	child := newFakeOS()
	child.env[EnvName("listen")] = "3,4,5"
	cu, err := New(Options{Names: []string{"listen"}, OS: child})
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Close()
	if len(child.adopted) != 3 {
		t.Errorf("adopted %v, want fds 3, 4, 5", child.adopted)
	}
	first := cu.Inherited("listen")
	if first == nil {
		t.Fatal("no inherited listener")
	}
	first.Close()
	group := cu.InheritedGroup("listen")
	if len(group) != 2 || cu.InheritedGroup("listen") != nil {
		t.Fatalf("InheritedGroup: %d, then not nil; want 2 once", len(group))
	}
	for _, l := range group {
		l.Close()
	}
}
