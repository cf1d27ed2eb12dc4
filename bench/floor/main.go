//go:build linux

// Command floor is a measuring stick, not a proxy: the least a Go program
// can do per short connection of the harness's rate scenario (connect, 64 B
// each way, close), to tell how far stickyd's CPU per connection could go.
// One locked thread blocks in epoll_wait and does everything with bare
// system calls (RawSyscall for the non-blocking reads, writes, shutdowns and
// closes, as stickyd's engine does): accept4, socket, connect, one write of
// a PROXY v2 header with the client's first bytes, relay, half-close,
// close. It has no
// handshake timeouts, no sniffing, no keep-alive, no fail-over, no bulk
// path, no error handling worth the name: do not put it in front of
// anything.
//
//	go build -o /tmp/floor ./bench/floor
//	/tmp/floor -listen 127.0.0.1:9000 -b0 127.0.0.1:9001 -b1 127.0.0.1:9002 &
//	loadgen rate -target 127.0.0.1:9000 -pid $! -c 16 -d 10s
package main

import (
	"encoding/binary"
	"flag"
	"log"
	"net/netip"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

type conn struct {
	cfd, bfd    int
	connected   bool
	pend        []byte // header, then client bytes, until the backend is connected
	cEOF, bDone bool
}

var (
	table = make([]*conn, 1<<16)
	buf   = make([]byte, 64<<10)
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9000", "listen address (IPv4)")
	b0 := flag.String("b0", "", "backend 0 (IPv4)")
	b1 := flag.String("b1", "", "backend 1 (IPv4)")
	flag.Parse()
	runtime.LockOSThread()
	la := netip.MustParseAddrPort(*listen)
	backs := []netip.AddrPort{netip.MustParseAddrPort(*b0), netip.MustParseAddrPort(*b1)}
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		log.Fatal(err)
	}
	unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // inherited
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: int(la.Port()), Addr: la.Addr().As4()}); err != nil {
		log.Fatal(err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		log.Fatal(err)
	}
	ep, _ := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)})
	evs := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(ep, evs, -1)
		if err != nil {
			continue
		}
		for _, ev := range evs[:n] {
			if fd := int(ev.Fd); fd == lfd {
				accept(ep, lfd, la, backs)
			} else if c := table[fd]; c != nil {
				service(c, fd)
			}
		}
	}
}

// accept takes every pending client and starts connecting its backend.
func accept(ep, lfd int, la netip.AddrPort, backs []netip.AddrPort) {
	for {
		cfd, sa, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return
		}
		s4, ok := sa.(*unix.SockaddrInet4)
		if !ok {
			unix.Close(cfd)
			continue
		}
		peer := netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), uint16(s4.Port))
		b := backs[peer.Addr().As4()[3]%2]
		bfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		unix.SetsockoptInt(bfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		unix.Connect(bfd, &unix.SockaddrInet4{Port: int(b.Port()), Addr: b.Addr().As4()})
		c := &conn{cfd: cfd, bfd: bfd, pend: v2Header(peer, la)}
		table[cfd], table[bfd] = c, c
		unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, cfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(cfd)})
		unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, bfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(bfd)})
	}
}

func v2Header(src, dst netip.AddrPort) []byte {
	h := make([]byte, 28, 28+64)
	copy(h, "\r\n\r\n\x00\r\nQUIT\n")
	h[12], h[13] = 0x21, 0x11 // v2 PROXY, TCP over IPv4
	binary.BigEndian.PutUint16(h[14:], 12)
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(h[16:], s[:])
	copy(h[20:], d[:])
	binary.BigEndian.PutUint16(h[24:], src.Port())
	binary.BigEndian.PutUint16(h[26:], dst.Port())
	return h
}

// service moves what it can for c after an event on fd.
func service(c *conn, fd int) {
	if !c.connected {
		if fd != c.bfd { // the client spoke first: keep its bytes
			if n, err := read(c.cfd, buf); err == nil && n > 0 {
				c.pend = append(c.pend, buf[:n]...)
			}
			return
		}
		c.connected = true
	}
	if c.pend != nil { // the header and the client's first bytes, at once
		if n, err := read(c.cfd, buf); err == nil && n > 0 {
			c.pend = append(c.pend, buf[:n]...)
		} else if err == nil {
			c.cEOF = true
		}
		write(c.bfd, c.pend)
		c.pend = nil
		if c.cEOF {
			shutdownWrite(c.bfd)
		}
		return
	}
	copyUp(c)
	copyDown(c)
	if c.bDone {
		table[c.cfd], table[c.bfd] = nil, nil
		syscall.RawSyscall(unix.SYS_CLOSE, uintptr(c.cfd), 0, 0)
		syscall.RawSyscall(unix.SYS_CLOSE, uintptr(c.bfd), 0, 0)
	}
}

// copyUp moves what the client sent to the backend, and passes on its EOF.
func copyUp(c *conn) {
	for {
		n, err := read(c.cfd, buf)
		if err != nil {
			return
		}
		if n == 0 {
			if !c.cEOF {
				c.cEOF = true
				shutdownWrite(c.bfd)
			}
			return
		}
		write(c.bfd, buf[:n])
	}
}

// copyDown moves what the backend sent to the client; its EOF ends c.
func copyDown(c *conn) {
	for {
		n, err := read(c.bfd, buf)
		if err != nil {
			return
		}
		if n == 0 {
			c.bDone = true
			return
		}
		write(c.cfd, buf[:n])
	}
}

func shutdownWrite(fd int) {
	syscall.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
}

func read(fd int, b []byte) (int, error) {
	n, _, e := syscall.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func write(fd int, b []byte) {
	syscall.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
}
