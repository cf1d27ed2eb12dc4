//go:build unix

package relay

import (
	"net"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// The listener must stay non-blocking while a copy is handed to a child:
// the accept loop calls accept4 with RawSyscall, which a blocking socket
// would hold a P in. exec.Cmd calls Fd on every ExtraFiles entry, which
// turns a net File() dup blocking, and the flag is shared.
func TestDupListenerKeepsNonBlocking(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := DupListener(ln)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("true")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if ferr != nil {
		t.Fatal(ferr)
	}
	if flags&unix.O_NONBLOCK == 0 {
		t.Fatal("the listener turned blocking after the hand-over")
	}
}
