//go:build linux

package relay

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loops make only non-blocking system calls (sockets and pipes are
// O_NONBLOCK, epoll_wait has timeout 0), each a few microseconds at most.
// They are made with RawSyscall, which skips the runtime's syscall
// bookkeeping: with Syscall, a call that outlasts one sysmon tick (20 us,
// common for a write or close on loopback, which runs the receiver's TCP
// input too) may get its P handed to another thread, and every such hand-off
// is a futex wake-up and a context switch. Measured: about a quarter of
// stickyd's CPU per short connection was that scheduler churn.
//
// Each helper returns the raw errno (0 for success), so that the hot path
// compares numbers and builds no error values.

func epRead(fd int32, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		if e != unix.EINTR {
			return int(n), e
		}
	}
}

func epWrite(fd int32, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		if e != unix.EINTR {
			return int(n), e
		}
	}
}

// epPeek reads into b without taking the bytes from the socket (MSG_PEEK).
func epPeek(fd int32, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		if e != unix.EINTR {
			return int(n), e
		}
	}
}

// epWritev2 writes a then b with one writev(2); either may be empty.
func epWritev2(fd int32, a, b []byte) (int, syscall.Errno) {
	var iov [2]unix.Iovec
	n := 0
	for _, p := range [2][]byte{a, b} {
		if len(p) > 0 {
			iov[n].Base = unsafe.SliceData(p)
			iov[n].SetLen(len(p))
			n++
		}
	}
	for {
		m, _, e := syscall.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
		if e != unix.EINTR {
			return int(m), e
		}
	}
}

// epSplice moves up to n bytes from rfd to wfd, one of them a pipe.
func epSplice(rfd, wfd int32, n int) (int, syscall.Errno) {
	for {
		m, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, uintptr(rfd), 0, uintptr(wfd), 0, uintptr(n),
			unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if e != unix.EINTR {
			return int(m), e
		}
	}
}

// epClose closes fd; closing a socket also removes it from every epoll set.
func epClose(fd int32) {
	syscall.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func epShutdownWrite(fd int32) {
	syscall.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
}

// epWaitNow collects the ready events of epfd without waiting.
func epWaitNow(epfd int, events []unix.EpollEvent) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))),
		uintptr(len(events)), 0, 0, 0)
	return int(n), e
}

func epCtl(epfd, op int, fd int32, events uint32) syscall.Errno {
	ev := unix.EpollEvent{Events: events, Fd: fd}
	_, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	return e
}

// epFcntl is fcntl(2) with an integer argument.
func epFcntl(fd uintptr, cmd, arg int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_FCNTL, fd, uintptr(cmd), uintptr(arg))
	return int(r), e
}

// errnoErr returns e as an error, nil for 0.
func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
