//go:build linux

package relay

import (
	"time"

	"golang.org/x/sys/unix"
)

// clientQuiet is how long c has sent no byte: the time since start, or
// less if the kernel says (TCP_INFO) that c's last data came later. Only
// called on rare paths (a timeout, a backend's early end).
func clientQuiet(c Conn, start time.Time) time.Duration {
	quiet := time.Since(start)
	rc, err := c.SyscallConn()
	if err != nil {
		return quiet
	}
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			quiet = min(quiet, time.Duration(info.Last_data_recv)*time.Millisecond)
		}
	})
	return quiet
}
