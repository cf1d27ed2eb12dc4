package main

import (
	"errors"
	"fmt"
	_ "github.com/stickyd/stickyd/internal/linuxonly" // stickyd is Linux-only
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// Bulk transfers use zero-copy system calls so that the load generator and
// the backend, which share the machine's cores with the proxy, cost as
// little CPU as possible: the sender sendfile(2)s pages of a memfd full of
// zeros, the receiver recv(2)s with MSG_TRUNC, which makes TCP drop the bytes
// without copying them to user space.

// zeroFileSize is the size of the memfd; transfers wrap around in it.
const zeroFileSize = 4 << 20

var zeroFile = sync.OnceValues(func() (int, error) {
	fd, err := unix.MemfdCreate("loadgen-zeros", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, zeroFileSize); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ftruncate memfd: %w", err)
	}
	return fd, nil
})

// sendZeros writes n zero bytes to c with sendfile(2). It honours c's write
// deadline.
func sendZeros(c *net.TCPConn, n int64) error {
	src, err := zeroFile()
	if err != nil {
		return err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var off int64
	var serr error
	for n > 0 && serr == nil {
		err = rc.Write(func(fd uintptr) bool {
			if off == zeroFileSize {
				off = 0
			}
			k, err := unix.Sendfile(int(fd), src, &off, int(min(n, zeroFileSize-off)))
			if errors.Is(err, unix.EAGAIN) {
				return false
			}
			n -= int64(max(k, 0))
			serr = err
			return true
		})
		if err != nil {
			return fmt.Errorf("%d bytes unsent: %w", n, err)
		}
	}
	if serr != nil {
		return fmt.Errorf("sendfile, %d bytes unsent: %w", n, serr)
	}
	return nil
}

// truncBuf only gives recv(2) its length: with MSG_TRUNC the kernel never
// writes to it, so it is shared by all goroutines and never becomes resident.
var truncBuf = make([]byte, 4<<20)

// recvDiscard reads and drops exactly n bytes from c with MSG_TRUNC. It
// honours c's read deadline.
func recvDiscard(c *net.TCPConn, n int64) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	eof := false
	for n > 0 && serr == nil && !eof {
		err = rc.Read(func(fd uintptr) bool {
			k, _, err := unix.Recvfrom(int(fd), truncBuf[:min(n, int64(len(truncBuf)))], unix.MSG_TRUNC|unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EAGAIN) {
				return false
			}
			serr = err
			eof = err == nil && k == 0
			n -= int64(max(k, 0))
			return true
		})
		if err != nil {
			return fmt.Errorf("%d bytes short: %w", n, err)
		}
	}
	if serr != nil || eof {
		return fmt.Errorf("%d bytes short: %v (eof %v)", n, serr, eof)
	}
	return nil
}
