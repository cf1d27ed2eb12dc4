package upgrade

import (
	"net"
	"os"
	"os/exec"

	"github.com/stickyd/stickyd/internal/reaper"
	"github.com/stickyd/stickyd/relay"
)

// OS is what an Upgrader needs of the operating system: the environment,
// the binary and its arguments, descriptors, and starting a process.
type OS interface {
	Getenv(key string) string
	Unsetenv(key string)
	Environ() []string
	// Executable is the path of the running binary; Args its arguments
	// (without the program name).
	Executable() (string, error)
	Args() []string
	// FileListener adopts the inherited listening socket at fd.
	FileListener(fd uintptr, name string) (net.Listener, error)
	// NewFile adopts the inherited descriptor fd.
	NewFile(fd uintptr, name string) *os.File
	// Dup returns a copy of ln's socket for a child process.
	Dup(ln net.Listener) (*os.File, error)
	// Start starts exe with args and env; files are its descriptors 3
	// onward. Its output goes to this process's.
	Start(exe string, args, env []string, files []*os.File) (Process, error)
}

// Process is a started process.
type Process interface {
	Pid() int
	Kill() error
	Wait() error
}

// systemOS is the real OS.
type systemOS struct{}

func (systemOS) Getenv(key string) string    { return os.Getenv(key) }
func (systemOS) Unsetenv(key string)         { os.Unsetenv(key) }
func (systemOS) Environ() []string           { return os.Environ() }
func (systemOS) Executable() (string, error) { return os.Executable() }
func (systemOS) Args() []string              { return os.Args[1:] }

func (systemOS) NewFile(fd uintptr, name string) *os.File { return os.NewFile(fd, name) }

func (systemOS) FileListener(fd uintptr, name string) (net.Listener, error) {
	f := os.NewFile(fd, name)
	defer f.Close() // FileListener dups it
	return net.FileListener(f)
}

// Dup keeps the socket non-blocking (relay.DupListener), which the
// accept loop relies on.
func (systemOS) Dup(ln net.Listener) (*os.File, error) { return relay.DupListener(ln) }

func (systemOS) Start(exe string, args, env []string, files []*os.File) (Process, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env, cmd.ExtraFiles = env, files
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := reaper.Start(cmd); err != nil { // its Wait, not the reaper, collects it
		return nil, err
	}
	return process{cmd}, nil
}

// process is a started exec.Cmd.
type process struct{ cmd *exec.Cmd }

func (p process) Pid() int    { return p.cmd.Process.Pid }
func (p process) Kill() error { return p.cmd.Process.Kill() }
func (p process) Wait() error { return reaper.Wait(p.cmd) }
