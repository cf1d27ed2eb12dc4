// Package upgrade hands a process's listening sockets to a new copy of its
// binary: a zero-downtime upgrade, shaped like cloudflare/tableflip. The
// Upgrader owns the state (the sockets inherited from a parent, the
// readiness pipe, an upgrade in flight); the operating system is reached
// through OS, which tests replace.
//
// The running process starts the new one (os.Executable, the same
// arguments) with the sockets as inherited descriptors, named in the
// environment:
//
//	STICKYD_<NAME>_FD  a listening socket: STICKYD_LISTEN_FD, STICKYD_ADMIN_FD;
//	                   with a group (Listener.Group), its descriptors after a comma
//	STICKYD_READY_FD   a pipe: the new process writes one byte once it serves
//
// Until then both processes accept from the same sockets, so no client is
// refused. If the new process exits, or is not ready within the timeout,
// it is killed and the old one goes on serving.
//
//	u, err := upgrade.New(upgrade.Options{Names: []string{"listen"}, Log: log})
//	ln := u.Inherited("listen") // nil: not started by an upgrade
//	...                         // listen, serve
//	u.Ready()                   // the parent may stop now
//	err = u.Upgrade([]upgrade.Listener{{Name: "listen", Listener: ln}}, nil) // on SIGUSR2
package upgrade

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// DefaultTimeout bounds the wait for a new process to be ready.
const DefaultTimeout = 30 * time.Second

// EnvReady names the readiness pipe's descriptor in the environment.
const EnvReady = "STICKYD_READY_FD"

// ErrInProgress is returned by Upgrade while another upgrade runs.
var ErrInProgress = errors.New("upgrade: already in progress")

// EnvName is the environment variable that names listener name's
// descriptor: listen is STICKYD_LISTEN_FD.
func EnvName(name string) string { return "STICKYD_" + strings.ToUpper(name) + "_FD" }

// Options configure an Upgrader.
type Options struct {
	// Names are the listeners a parent may pass ("listen", "admin").
	Names []string
	// OS is the operating system; nil for the real one.
	OS OS
	// Timeout bounds the wait for a new process; 0 for DefaultTimeout.
	Timeout time.Duration
	// Log receives the upgrade's progress.
	Log *zap.Logger
}

// Listener is a listening socket to hand over, by name, with the other
// sockets of its SO_REUSEPORT group, if any: the kernel gives connections
// to every socket of a group, so each must go on being accepted from.
type Listener struct {
	Name     string
	Listener net.Listener
	Group    []net.Listener
}

// Upgrader is one process's side of upgrades: what it inherited from its
// parent, and the upgrades it starts. Its methods are safe for concurrent
// use.
type Upgrader struct {
	os      OS
	names   []string
	timeout time.Duration
	log     *zap.Logger

	mu        sync.Mutex
	inherited map[string]net.Listener   // not yet taken; guarded by mu
	groups    map[string][]net.Listener // the same, the rest of a group
	ready     *os.File                  // to the parent; nil when none; guarded by mu
	upgrading bool                      // an Upgrade runs; guarded by mu
	child     bool                      // started by an upgrade: it inherited listeners; set by New
}

// New adopts the descriptors a parent named in the environment (none for
// a process started normally) and removes the variables, so that child
// processes and later upgrades do not see them.
func New(o Options) (*Upgrader, error) {
	u := &Upgrader{os: o.OS, names: o.Names, timeout: o.Timeout, log: o.Log,
		inherited: make(map[string]net.Listener), groups: make(map[string][]net.Listener)}
	if u.os == nil {
		u.os = systemOS{}
	}
	if u.timeout == 0 {
		u.timeout = DefaultTimeout
	}
	if u.log == nil {
		u.log = zap.NewNop()
	}
	fds := make(map[string]string)
	for _, name := range o.Names {
		fds[name] = u.os.Getenv(EnvName(name))
		u.os.Unsetenv(EnvName(name))
	}
	readyFD := u.os.Getenv(EnvReady)
	u.os.Unsetenv(EnvReady)
	for _, name := range o.Names {
		if err := u.adopt(name, fds[name]); err != nil {
			u.Close()
			return nil, err
		}
	}
	if n, err := strconv.Atoi(readyFD); err == nil && n > 2 {
		u.ready = u.os.NewFile(uintptr(n), "ready")
	}
	u.child = len(u.inherited) > 0
	return u, nil
}

// Child reports whether this process was started by an upgrade (it
// inherited listeners), whether or not it has taken them yet.
func (u *Upgrader) Child() bool { return u.child }

// adopt takes the inherited listener name at descriptor fds ("": none;
// "3,4,5": a group).
func (u *Upgrader) adopt(name, fds string) error {
	if fds == "" {
		return nil
	}
	for i, fd := range strings.Split(fds, ",") {
		n, err := strconv.Atoi(fd)
		if err != nil || n < 3 {
			return fmt.Errorf("upgrade: bad inherited %s descriptor %q", name, fd)
		}
		ln, err := u.os.FileListener(uintptr(n), name)
		if err != nil {
			return fmt.Errorf("upgrade: inherited %s socket: %w", name, err)
		}
		if i == 0 {
			u.inherited[name] = ln
		} else {
			u.groups[name] = append(u.groups[name], ln)
		}
	}
	return nil
}

// Inherited returns, once, the listener name inherited from the parent;
// nil when there is none. The caller owns it.
func (u *Upgrader) Inherited(name string) net.Listener {
	u.mu.Lock()
	defer u.mu.Unlock()
	ln := u.inherited[name]
	delete(u.inherited, name)
	return ln
}

// InheritedGroup returns, once, the other sockets of the group of the
// listener name inherited from the parent; nil when there are none. The
// caller owns them.
func (u *Upgrader) InheritedGroup(name string) []net.Listener {
	u.mu.Lock()
	defer u.mu.Unlock()
	g := u.groups[name]
	delete(u.groups, name)
	return g
}

// Ready tells the parent that this process serves (nothing without a
// parent).
func (u *Upgrader) Ready() error {
	u.mu.Lock()
	ready := u.ready
	u.ready = nil
	u.mu.Unlock()
	if ready == nil {
		return nil
	}
	defer ready.Close()
	if _, err := ready.Write([]byte{1}); err != nil {
		return fmt.Errorf("upgrade: tell the old process we are ready: %w", err)
	}
	return nil
}

// Close releases what was inherited and not taken, and the readiness
// pipe (the parent then sees this process give up).
func (u *Upgrader) Close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for name, ln := range u.inherited {
		ln.Close()
		delete(u.inherited, name)
	}
	for name, g := range u.groups {
		for _, ln := range g {
			ln.Close()
		}
		delete(u.groups, name)
	}
	if u.ready != nil {
		u.ready.Close()
		u.ready = nil
	}
}
