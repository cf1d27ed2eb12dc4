package backend

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrWorkerPortInUse is wrapped by the errors of NewSupervisor and of a
// worker's (re)start when another program holds the worker's port.
var ErrWorkerPortInUse = errors.New("backend: worker port in use by another program")

// Automatic worker ports (PortBase 0) are drawn from autoPortMin up to the
// kernel's ephemeral range, so that no outgoing connection (stickyd's own
// dials to the workers included) can take a worker's port while the worker
// restarts.
const (
	autoPortMin   = 10000
	autoPortTries = 200
)

// reservePorts finds n consecutive free loopback ports at a random base
// below the ephemeral range and holds each one with a socket bound without
// SO_REUSEADDR and not listening: no other program (another stickyd picking
// its own ports included) can bind them meanwhile, and nothing answers on
// them. The caller closes each descriptor just before its worker starts.
func reservePorts(n int) (base int, fds []int, err error) {
	top := ephemeralLow() - n
	if top <= autoPortMin {
		return 0, nil, fmt.Errorf("%w: no room for %d automatic worker ports below the ephemeral range", ErrWorkerConfig, n)
	}
	for range autoPortTries {
		base = autoPortMin + rand.IntN(top-autoPortMin)
		fds = fds[:0]
		for i := range n {
			fd, err := bindLoopback(base+i, false)
			if err != nil {
				break
			}
			fds = append(fds, fd)
		}
		if len(fds) == n {
			return base, fds, nil
		}
		closeAll(fds)
	}
	return 0, nil, fmt.Errorf("%w: no %d consecutive free ports found in %d tries; set port_base", ErrWorkerPortInUse, n, autoPortTries)
}

// checkWorkerPort reports whether a worker could bind 127.0.0.1:port now, as
// servers do (with SO_REUSEADDR, so that connections of an earlier worker in
// TIME_WAIT do not count): an error wrapping ErrWorkerPortInUse when another
// socket listens there or holds the port exclusively.
func checkWorkerPort(port int) error {
	fd, err := bindLoopback(port, true)
	if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: 127.0.0.1:%d: %w", ErrWorkerPortInUse, port, err)
	}
	if err != nil {
		return fmt.Errorf("check worker port 127.0.0.1:%d: %w", port, err)
	}
	unix.Close(fd)
	return nil
}

// bindLoopback returns a TCP socket bound to 127.0.0.1:port (not listening).
func bindLoopback(port int, reuse bool) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= autoPortMin {
		return 32768
	}
	return n
}
