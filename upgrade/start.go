package upgrade

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Upgrade starts a new copy of the binary with the listeners (and env
// added to this process's environment) and returns nil once it is ready.
// On error the new process has been killed and this one is unchanged;
// ErrInProgress while another upgrade runs.
func (u *Upgrader) Upgrade(listeners []Listener, env []string) error {
	u.mu.Lock()
	if u.upgrading {
		u.mu.Unlock()
		return ErrInProgress
	}
	u.upgrading = true
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.upgrading = false
		u.mu.Unlock()
	}()
	return u.start(listeners, env)
}

func (u *Upgrader) start(listeners []Listener, extra []string) error {
	exe, err := u.os.Executable()
	if err != nil {
		return fmt.Errorf("find the binary: %w", err)
	}
	files, env, err := u.files(listeners)
	if err != nil {
		return err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		closeAll(files)
		return fmt.Errorf("readiness pipe: %w", err)
	}
	defer readyR.Close()
	env = append(append(env, extra...), EnvReady+"="+strconv.Itoa(3+len(files)))
	files = append(files, readyW)
	u.log.Info("upgrade: starting a new process", zap.String("binary", exe))
	p, err := u.os.Start(exe, u.os.Args(), env, files)
	closeAll(files) // the child has its copies
	if err != nil {
		return fmt.Errorf("start %s: %w", exe, err)
	}
	exited := make(chan struct{})
	go func() { p.Wait(); close(exited) }()
	if err := u.awaitReady(readyR); err != nil {
		if errors.Is(err, errExitedEarly) { // it closed the pipe: let it say why, then exit
			t := time.NewTimer(exitGrace)
			select {
			case <-exited:
			case <-t.C:
			}
			t.Stop()
		}
		p.Kill()
		<-exited
		return fmt.Errorf("new process (pid %d): %w", p.Pid(), err)
	}
	u.log.Info("upgrade: new process ready", zap.Int("pid", p.Pid()))
	return nil
}

// files duplicates the listeners for the child and returns them with the
// environment that names them (fd 3 onward): this process's, less any
// variable of ours.
func (u *Upgrader) files(listeners []Listener) ([]*os.File, []string, error) {
	ours := []string{EnvReady}
	for _, name := range u.names {
		ours = append(ours, EnvName(name))
	}
	var env []string
	for _, kv := range u.os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !slices.Contains(ours, k) {
			env = append(env, kv)
		}
	}
	var files []*os.File
	for _, l := range listeners {
		if l.Listener == nil {
			continue
		}
		var fds []string
		for _, ln := range append([]net.Listener{l.Listener}, l.Group...) {
			f, err := u.os.Dup(ln)
			if err != nil {
				closeAll(files)
				return nil, nil, fmt.Errorf("upgrade: pass the %s socket: %w", l.Name, err)
			}
			fds = append(fds, strconv.Itoa(3+len(files)))
			files = append(files, f)
		}
		env = append(env, EnvName(l.Name)+"="+strings.Join(fds, ","))
	}
	return files, env, nil
}

// awaitReady waits for the readiness byte.
func (u *Upgrader) awaitReady(r *os.File) error {
	r.SetReadDeadline(time.Now().Add(u.timeout))
	var b [1]byte
	if n, err := r.Read(b[:]); n == 1 {
		return nil
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("not ready within %v", u.timeout)
	}
	return errExitedEarly
}

// errExitedEarly: the new process closed the readiness pipe without a
// byte, as it does when its start fails (it is then printing why).
var errExitedEarly = errors.New("exited before it was ready")

// exitGrace is how long a new process that gave up is left to print why
// and exit before it is killed.
const exitGrace = 5 * time.Second

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
