//go:build unix

package server

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// DupListener returns a duplicate of ln's socket (close-on-exec) as an
// *os.File that keeps the socket non-blocking: unlike net's File, whose Fd
// (called by exec on every ExtraFiles entry) clears O_NONBLOCK on the open
// file description the duplicate shares with ln. The raw accept loop
// (rawListener) and an upgrade's hand-over to a child both rely on that:
// accept4 is made with RawSyscall, which a blocking socket would hold a P in.
func DupListener(ln net.Listener) (*os.File, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("listener %s cannot be duplicated", ln.Addr())
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("dup listener %s: %w", ln.Addr(), err)
	}
	if derr != nil {
		return nil, fmt.Errorf("dup listener %s: %w", ln.Addr(), derr)
	}
	return os.NewFile(uintptr(dup), "listener"), nil
}
