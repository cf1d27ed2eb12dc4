//go:build linux

package relay

import (
	"time"

	"golang.org/x/sys/unix"
)

// tcpInfo is c's TCP_INFO, or nil (a Unix socket, a closed one).
func tcpInfo(c Conn) *unix.TCPInfo {
	var info *unix.TCPInfo
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	}
	return info
}

// clientQuiet is how long c has sent no byte: the time since start, or
// less if the kernel says (TCP_INFO) that c's last data came later. Only
// called on rare paths (a timeout, a backend's early end).
func clientQuiet(c Conn, start time.Time) time.Duration {
	quiet := time.Since(start)
	if info := tcpInfo(c); info != nil {
		quiet = min(quiet, time.Duration(info.Last_data_recv)*time.Millisecond)
	}
	return quiet
}

// tcpClosed reports whether c is a TCP socket in state CLOSE: reset, or
// failed otherwise (a timeout). A Unix socket is never.
func tcpClosed(c Conn) bool {
	info := tcpInfo(c)
	return info != nil && info.State == unix.BPF_TCP_CLOSE
}

// drainNow reads and drops what c has received, without waiting: closing
// a socket with unread bytes sends an RST instead of a FIN, and the RST
// throws away what is still queued for the peer. It reads the descriptor
// itself, because a read deadline (abort's) would stop a c.Read at once.
// It stops after 1 MiB: a peer that sends on meanwhile gets its RST.
func drainNow(c Conn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	var buf [16 << 10]byte
	rc.Control(func(fd uintptr) {
		for range 64 {
			if n, err := unix.Read(int(fd), buf[:]); n <= 0 || err != nil {
				return
			}
		}
	})
}
