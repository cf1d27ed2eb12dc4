package relay

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket is a connected TCP socket held as a bare, non-blocking descriptor.
// Unlike a *net.TCPConn it is not registered with the Go netpoller and has
// no finalizer, so making one costs no system call, and the epoll engine
// takes its descriptor as it is; a net.Conn costs the engine a dup(2), and
// its close an epoll_ctl(2) (see EpollEngine).
//
// A Socket is a complete net.Conn all the same. Read and ReadNow first try a
// non-blocking read(2). A Read that finds nothing waits in one of the loops
// of the Socket's engine, if it has one (EpollEngine.NewSocket,
// EpollEngine.DialTimeout; see epoll_wait.go), under its read deadline. Any
// other call that has to wait (a Write, SyscallConn, TCPConn; a Read without
// an engine) converts it, once, into a *net.TCPConn (net.FileConn), which
// every later call uses; deadlines set before carry over. So a handshake
// that only reads never pays for the netpoller.
//
//	nfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
//	s := eng.NewSocket(nfd, local, remote) // s owns nfd
//	eng.Start(relay.Pair{Client: s, ...}) // the engine owns s
//
// Its methods are safe for concurrent use, but a deadline set while a Read
// waits in a loop applies from the next Read.
type Socket struct {
	local, remote netip.AddrPort

	eng     *EpollEngine // waits take place in its loops; nil: convert instead
	home    *epLoop      // the loop whose epoll set holds fd (disabled), if any
	waiting bool         // a Read waits in home (guarded by mu)

	mu     sync.Mutex
	fd     int          // the bare descriptor; -1 once converted, taken or closed
	conn   *net.TCPConn // after conversion
	closed bool
	dl     *[2]time.Time // read and write deadlines set before conversion
}

// A Socket offers all of the seam's small interfaces (conn.go).
var _ interface {
	nowReader
	addrPorter
	tcpConner
} = (*Socket)(nil)

// NewSocket returns a Socket owning fd, a connected non-blocking TCP socket
// from local to remote (addresses as the caller knows them, not checked).
// Its Reads convert it when they must wait; see EpollEngine.NewSocket.
func NewSocket(fd int, local, remote netip.AddrPort) *Socket {
	return &Socket{fd: fd, local: local, remote: remote}
}

// NewSocket is relay.NewSocket for a socket meant for e: a Read that must
// wait does so in one of e's loops, and Start then re-arms the socket there
// instead of adding it.
func (e *EpollEngine) NewSocket(fd int, local, remote netip.AddrPort) *Socket {
	return &Socket{fd: fd, local: local, remote: remote, eng: e}
}

// AddrPorts returns the local and remote addresses given to NewSocket
// (a Socket given no local address, such as a dialed one or one accepted
// on an unspecified address, learns it on the first call).
func (s *Socket) AddrPorts() (local, remote netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.local.IsValid() && s.fd >= 0 {
		if sa, err := unix.Getsockname(s.fd); err == nil {
			s.local = sockaddrAddrPort(sa)
		}
	}
	return s.local, s.remote
}

// LocalAddr implements net.Conn.
func (s *Socket) LocalAddr() net.Addr {
	local, _ := s.AddrPorts()
	return net.TCPAddrFromAddrPort(local)
}

// RemoteAddr implements net.Conn.
func (s *Socket) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(s.remote) }

// ReadNow reads what has arrived, without waiting. It returns 0, nil when
// nothing has arrived yet, and 0, io.EOF at the end of the stream. It does
// not convert the Socket and ignores the read deadline.
func (s *Socket) ReadNow(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil || s.closed || len(b) == 0 {
		if s.closed {
			return 0, s.opErr("read", net.ErrClosed)
		}
		return 0, nil
	}
	return s.readRaw(b)
}

// readRaw is one read(2); EAGAIN is 0, nil. Called with s.mu held.
func (s *Socket) readRaw(b []byte) (int, error) {
	n, e := epRead(int32(s.fd), b)
	switch {
	case e == unix.EAGAIN:
		return 0, nil
	case e != 0:
		return 0, s.opErr("read", os.NewSyscallError("read", e))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Read implements net.Conn: bytes already arrived are read at once; for
// more, it waits in a loop of the Socket's engine, or converts the Socket.
func (s *Socket) Read(b []byte) (int, error) {
	s.mu.Lock()
	for {
		if s.conn != nil || s.closed {
			break
		}
		if len(b) == 0 {
			s.mu.Unlock()
			return 0, nil
		}
		var deadline time.Time
		if s.dl != nil {
			deadline = s.dl[0]
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			s.mu.Unlock()
			return 0, s.opErr("read", os.ErrDeadlineExceeded)
		}
		if n, err := s.readRaw(b); n > 0 || err != nil {
			s.mu.Unlock()
			return n, err
		}
		if s.eng == nil || s.waiting || s.eng.closed.Load() {
			break
		}
		if err := s.waitReadable(deadline); err != nil {
			return 0, err // s.mu released
		}
	}
	c, err := s.convertLocked()
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return c.Read(b)
}

// waitReadable waits in a loop of s.eng until s is readable or deadline
// passes. Called with s.mu held; it releases it, and retakes it only when
// it returns nil.
func (s *Socket) waitReadable(deadline time.Time) error {
	op := unix.EPOLL_CTL_MOD
	if s.home == nil {
		s.home, op = s.eng.pick(), unix.EPOLL_CTL_ADD
	}
	l, fd := s.home, int32(s.fd)
	s.waiting = true
	s.mu.Unlock()
	var timeout time.Duration
	if !deadline.IsZero() {
		timeout = max(time.Until(deadline), time.Nanosecond)
	}
	_, err := l.wait(fd, op, unix.EPOLLIN|unix.EPOLLRDHUP, nil, timeout)
	s.mu.Lock()
	s.waiting = false
	if err == nil {
		return nil
	}
	s.mu.Unlock()
	if err == errWaitTimeout {
		err = os.ErrDeadlineExceeded
	}
	return s.opErr("read", err)
}

// Write implements net.Conn; it converts the Socket.
func (s *Socket) Write(b []byte) (int, error) {
	c, err := s.TCPConn()
	if err != nil {
		return 0, err
	}
	return c.Write(b)
}

// Close implements net.Conn.
func (s *Socket) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return s.opErr("close", net.ErrClosed)
	}
	s.closed = true
	if s.conn != nil {
		return s.conn.Close()
	}
	if s.waiting {
		s.home.abortWait(int32(s.fd)) // the Read returns net.ErrClosed
	}
	epClose(int32(s.fd))
	s.fd = -1
	return nil
}

// CloseWrite shuts down the writing side (half-close).
func (s *Socket) CloseWrite() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return s.opErr("close", net.ErrClosed)
	case s.conn != nil:
		return s.conn.CloseWrite()
	}
	if err := unix.Shutdown(s.fd, unix.SHUT_WR); err != nil {
		return s.opErr("close", os.NewSyscallError("shutdown", err))
	}
	return nil
}

// SetDeadline implements net.Conn.
func (s *Socket) SetDeadline(t time.Time) error {
	return s.setDeadline(t, true, true)
}

// SetReadDeadline implements net.Conn.
func (s *Socket) SetReadDeadline(t time.Time) error { return s.setDeadline(t, true, false) }

// SetWriteDeadline implements net.Conn.
func (s *Socket) SetWriteDeadline(t time.Time) error { return s.setDeadline(t, false, true) }

func (s *Socket) setDeadline(t time.Time, r, w bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return s.opErr("set deadline", net.ErrClosed)
	case s.conn != nil && r && w:
		return s.conn.SetDeadline(t)
	case s.conn != nil && r:
		return s.conn.SetReadDeadline(t)
	case s.conn != nil:
		return s.conn.SetWriteDeadline(t)
	}
	if s.dl == nil {
		s.dl = new([2]time.Time)
	}
	if r {
		s.dl[0] = t
	}
	if w {
		s.dl[1] = t
	}
	return nil
}

// SyscallConn implements syscall.Conn; it converts the Socket.
func (s *Socket) SyscallConn() (syscall.RawConn, error) {
	c, err := s.TCPConn()
	if err != nil {
		return nil, err
	}
	return c.SyscallConn()
}

// TCPConn converts the Socket (once) and returns the *net.TCPConn that all
// its methods use from then on. The Socket still owns it.
func (s *Socket) TCPConn() (*net.TCPConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.convertLocked()
}

func (s *Socket) convertLocked() (*net.TCPConn, error) {
	if s.conn != nil {
		return s.conn, nil
	}
	if s.closed {
		return nil, s.opErr("convert", net.ErrClosed)
	}
	f := os.NewFile(uintptr(s.fd), "socket")
	c, err := net.FileConn(f) // a dup, registered with the netpoller
	f.Close()
	s.fd = -1
	if err != nil {
		s.closed = true
		return nil, s.opErr("convert", err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		s.closed = true
		return nil, s.opErr("convert", syscall.EPROTOTYPE)
	}
	s.conn = tc
	if s.dl != nil {
		if !s.dl[0].IsZero() {
			tc.SetReadDeadline(s.dl[0])
		}
		if !s.dl[1].IsZero() {
			tc.SetWriteDeadline(s.dl[1])
		}
	}
	return tc, nil
}

// take hands the bare descriptor to an engine: it returns it, with the
// loop whose epoll set holds it disabled if any, or -1 if the Socket was
// converted (the engine then detaches conn) or closed. The Socket is closed
// afterwards, as far as its user is concerned.
func (s *Socket) take() (fd int, home *epLoop, conn *net.TCPConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.waiting {
		return -1, nil, nil
	}
	s.closed = true
	if s.conn != nil {
		return -1, nil, s.conn
	}
	fd, s.fd = s.fd, -1
	return fd, s.home, nil
}

func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// plainConn returns the *net.TCPConn of a Socket (converting it), so that
// io.Copy can splice; other connections are returned as they are.
func plainConn(c Conn) Conn {
	if s, ok := c.(*Socket); ok {
		if tc, err := s.TCPConn(); err == nil {
			return tc
		}
	}
	return c
}

// opErr wraps err like package net does. It may be called with s.mu held.
func (s *Socket) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: net.TCPAddrFromAddrPort(s.local), Addr: s.RemoteAddr(), Err: err}
}

// tcpOptions are the options package net sets on every TCP connection it
// dials or accepts, by default: no Nagle, keep-alive 15s/15s/9. A dialed
// Socket gets them at once (to a loopback address only the first: see
// dialOptions); a listener gets them once, and the sockets it accepts
// inherit them (EpollEngine.Listener). TCP_NODELAY comes first.
var tcpOptions = [...]sockOpt{
	{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
	{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int32(15 * time.Second / time.Second)},
	{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int32(15 * time.Second / time.Second)},
	{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
}

// sockOpt is an integer socket option: setsockopt(fd, level, opt, &v).
type sockOpt struct{ level, opt, v int32 }

// setTCPOptions sets tcpOptions on fd; it returns the raw errno of the
// first that fails, or 0.
func setTCPOptions(fd int32) syscall.Errno { return setOptions(fd, tcpOptions[:]) }

// setOptions sets opts on fd; it returns the raw errno of the first that
// fails, or 0.
func setOptions(fd int32, opts []sockOpt) syscall.Errno {
	for _, o := range opts {
		v := o.v
		if _, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(o.level), uintptr(o.opt),
			uintptr(unsafe.Pointer(&v)), 4, 0); e != 0 {
			return e
		}
	}
	return 0
}
