package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/stickyd/stickyd/server"
	"go.uber.org/zap"
)

// Zero-downtime upgrade (SIGUSR2). The running process starts a new copy
// of its binary (os.Executable, the same arguments) and passes it the
// listening sockets as inherited descriptors, named in the environment:
//
//	STICKYD_LISTEN_FD  the proxy's listening socket
//	STICKYD_ADMIN_FD   the admin listener, when there is one
//	STICKYD_READY_FD   a pipe: the new process writes one byte once it serves
//
// Until then both processes accept from the same socket, so no client is
// refused. Once the new process is ready, the old one stops accepting,
// drains its connections (drain_timeout) and exits 0. If the new process
// exits or is not ready within upgradeTimeout, it is killed and the old one
// goes on serving. With [workers] an upgrade is refused: the new process
// would have to start its workers on the ports the old workers hold;
// restart instead.
const (
	envListenFD = "STICKYD_LISTEN_FD"
	envAdminFD  = "STICKYD_ADMIN_FD"
	envReadyFD  = "STICKYD_READY_FD"

	upgradeTimeout = 30 * time.Second
)

// errUpgradeWorkers is returned by upgrade with [workers].
var errUpgradeWorkers = errors.New("upgrade with [workers] is not supported (their ports are taken): restart instead")

// inherited is what a process started by an upgrade got from its parent;
// nil for a process started normally. Its methods accept a nil receiver.
type inherited struct {
	ln, admin net.Listener // admin may be nil
	ready     *os.File
}

// takeInherited adopts the descriptors named in the environment and
// removes the variables, so that workers and later upgrades do not see
// them.
func takeInherited() (*inherited, error) {
	lnFD := os.Getenv(envListenFD)
	if lnFD == "" {
		return nil, nil
	}
	adminFD, readyFD := os.Getenv(envAdminFD), os.Getenv(envReadyFD)
	for _, k := range []string{envListenFD, envAdminFD, envReadyFD} {
		os.Unsetenv(k)
	}
	in := &inherited{}
	var err error
	if in.ln, err = fileListener(lnFD, "listen"); err != nil {
		return nil, err
	}
	if adminFD != "" {
		if in.admin, err = fileListener(adminFD, "admin"); err != nil {
			in.ln.Close()
			return nil, err
		}
	}
	if n, err := strconv.Atoi(readyFD); err == nil && n > 2 {
		in.ready = os.NewFile(uintptr(n), "ready")
	}
	return in, nil
}

func fileListener(fd, name string) (net.Listener, error) {
	n, err := strconv.Atoi(fd)
	if err != nil || n < 3 {
		return nil, fmt.Errorf("bad inherited %s descriptor %q", name, fd)
	}
	f := os.NewFile(uintptr(n), name)
	defer f.Close() // FileListener dups it
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited %s socket: %w", name, err)
	}
	return ln, nil
}

// listener returns the inherited listening socket, or a new one on addr.
func (in *inherited) listener(addr string) (net.Listener, error) {
	if in != nil && in.ln != nil {
		return in.ln, nil
	}
	return net.Listen("tcp", addr)
}

// adminListener returns the inherited admin socket or a new one on addr
// (listenAdmin; perm for a Unix socket); nil when addr is "" (an
// inherited one is closed).
func (in *inherited) adminListener(addr string, perm os.FileMode) (net.Listener, error) {
	if in != nil && in.admin != nil {
		if addr == "" {
			in.admin.Close()
			return nil, nil
		}
		return in.admin, nil
	}
	if addr == "" {
		return nil, nil
	}
	return listenAdmin(addr, perm)
}

// signalReady tells the parent that this process serves.
func (in *inherited) signalReady(log *zap.Logger) {
	if in == nil || in.ready == nil {
		return
	}
	if _, err := in.ready.Write([]byte{1}); err != nil {
		log.Warn("upgrade: could not tell the old process we are ready", zap.Error(err))
	}
	in.ready.Close()
}

// close releases what was inherited, when start failed.
func (in *inherited) close() {
	if in == nil {
		return
	}
	for _, ln := range []net.Listener{in.ln, in.admin} {
		if ln != nil {
			ln.Close()
		}
	}
	if in.ready != nil {
		in.ready.Close()
	}
}

// upgrade starts the new process and returns nil once it serves. On error
// the new process has been killed and this one is unchanged.
func (d *daemon) upgrade() error {
	if d.sup != nil {
		return errUpgradeWorkers
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the binary: %w", err)
	}
	files, env, err := d.upgradeFiles()
	if err != nil {
		return err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		closeAll(files)
		return fmt.Errorf("readiness pipe: %w", err)
	}
	defer readyR.Close()
	env = append(env, envReadyFD+"="+strconv.Itoa(3+len(files)))
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env, cmd.ExtraFiles = env, append(files, readyW)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	d.log.Info("upgrade: starting a new process", zap.String("binary", exe))
	err = cmd.Start()
	closeAll(cmd.ExtraFiles) // the child has its copies
	if err != nil {
		return fmt.Errorf("start %s: %w", exe, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	if err := awaitReady(readyR); err != nil {
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("new process (pid %d): %w", cmd.Process.Pid, err)
	}
	d.log.Info("upgrade: new process ready", zap.Int("pid", cmd.Process.Pid))
	return nil
}

// upgradeFiles duplicates the listening sockets for the child and returns
// them with the environment that names them (fd 3 onward).
func (d *daemon) upgradeFiles() ([]*os.File, []string, error) {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envListenFD+"=") && !strings.HasPrefix(kv, envAdminFD+"=") && !strings.HasPrefix(kv, envReadyFD+"=") {
			env = append(env, kv)
		}
	}
	var files []*os.File
	for _, l := range []struct {
		ln  net.Listener
		env string
	}{{d.ln, envListenFD}, {d.adminLn, envAdminFD}} {
		if l.ln == nil {
			continue
		}
		f, err := server.DupListener(l.ln)
		if err != nil {
			closeAll(files)
			return nil, nil, err
		}
		env = append(env, l.env+"="+strconv.Itoa(3+len(files)))
		files = append(files, f)
	}
	if d.adminTokenEnv != "" { // taken out of this process's environment at start
		env = append(env, envAdminToken+"="+d.adminTokenEnv)
	}
	return files, env, nil
}

// awaitReady waits for the readiness byte.
func awaitReady(r *os.File) error {
	r.SetReadDeadline(time.Now().Add(upgradeTimeout))
	var b [1]byte
	if n, err := r.Read(b[:]); n == 1 {
		return nil
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("not ready within %v", upgradeTimeout)
	}
	return errors.New("exited before it was ready")
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// writePIDFile writes this process's id to path ("" = none) and returns
// it, for removePIDFile.
func writePIDFile(path string, log *zap.Logger) int {
	if path == "" {
		return 0
	}
	pid := os.Getpid()
	tmp := path + ".tmp" + strconv.Itoa(pid)
	err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		log.Error("pid file", zap.String("pid_file", path), zap.Error(err))
	}
	return pid
}

// removePIDFile removes path if it still holds pid (after an upgrade it
// holds the new process's).
func removePIDFile(path string, pid int) {
	if path == "" {
		return
	}
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
		os.Remove(path)
	}
}
