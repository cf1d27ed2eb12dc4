package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// Conn is what an Engine needs of a socket: a stream connection whose file
// descriptor can be reached (for splice(2) and epoll) and whose write side can
// be shut down on its own (half-close). *net.TCPConn and *net.UnixConn
// satisfy it.
type Conn interface {
	net.Conn
	syscall.Conn
	CloseWrite() error
}

// SocketMaker is an Engine that makes its own sockets, which it takes more
// cheaply than a net.Conn: the epoll engine (Socket). A server asks for it
// once, and otherwise uses package net:
//
//	if sm, ok := eng.(relay.SocketMaker); ok {
//		ln = sm.Listener(ln)
//		dial = sm.DialTimeout
//	}
type SocketMaker interface {
	// Listener returns a listener over ln whose Accept returns the
	// engine's sockets, or ln itself where it cannot (ln is not TCP). The
	// returned listener owns ln: its Close closes ln.
	Listener(ln net.Listener) net.Listener
	// DialTimeout connects like net.Dialer.DialContext with a Timeout
	// (zero: none) and returns a socket of the engine where it can.
	DialTimeout(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error)
}

// The small interfaces behind the seam's functions (conn.go): what a
// connection may offer beyond Conn. A Socket implements all three.
type (
	// nowReader reads what has arrived without waiting (ReadNow).
	nowReader interface {
		ReadNow(b []byte) (int, error)
	}
	// addrPorter knows its normalised addresses (AddrPorts).
	addrPorter interface {
		AddrPorts() (local, remote netip.AddrPort)
	}
	// tcpConner turns into a *net.TCPConn (TCPConn).
	tcpConner interface {
		TCPConn() (*net.TCPConn, error)
	}
)

// Pair is one proxied connection handed to an Engine.
type Pair struct {
	// Client is the accepted connection. Owned by the Engine after Start.
	Client Conn
	// Backend is the dialed backend connection. Owned by the Engine after
	// Start.
	Backend Conn
	// Header, if not empty, is written to the backend before anything else
	// (the outgoing PROXY header). It is not counted in Stats.BytesIn. The
	// Engine may send it together with Pending in one write, so that a
	// short exchange costs the backend one segment and one wake-up. Same
	// ownership as Pending.
	Header []byte
	// Pending holds bytes already read from the client (while sniffing a
	// PROXY or HTTP header) that the backend has not seen yet. The Engine
	// writes them to the backend right after Header, before any other
	// byte. The Engine may keep the slice; the caller must not modify it
	// after Start.
	Pending []byte
	// Idle closes the pair when no byte moved in either direction for this
	// long. Zero means no idle timeout.
	Idle time.Duration
	// Linger bounds how long one direction may stay open after the other
	// has ended (half-close). Zero means Idle, or no bound if Idle is zero.
	Linger time.Duration
	// FirstByte, if not zero, closes the pair (Stats.Err ErrFirstByte,
	// Stats.First FirstTimeout) when the backend has sent no byte yet and
	// this long has passed since the pair started or since the client's
	// last byte, whichever is later: a request the backend never answers,
	// or a server-speaks-first backend that stays silent. Once the backend
	// has sent a byte, only Idle applies. Resolution as for Idle.
	FirstByte time.Duration
	// RefuseProxy makes the Engine look at the client's first bytes when
	// they arrive: if they are a PROXY header signature (v1 "PROXY " or the
	// v2 signature), the pair is closed with Stats.Err ErrProxyHeader and the
	// backend never gets them. For a client whose first bytes the caller has
	// not seen (an untrusted client that was silent while its backend was
	// dialed). Bytes that could still start a signature wait in the socket
	// for the rest.
	RefuseProxy bool
	// HoldReplies, with RefuseProxy, holds the backend's bytes back from
	// the client until the client's first bytes have passed the check, or
	// for this long (resolution as for Idle): a client refused for a PROXY
	// header then gets none of the backend's bytes, while a backend that
	// speaks first still reaches a silent client. A client whose bytes
	// could still start a signature when the hold ends is refused like
	// one that sent it (ErrProxyHeader). For the pairs a loop's
	// Acceptor starts (the handshake of a client silent so far); the
	// goroutine engine, whose server sniffs such clients before Start,
	// ignores it.
	HoldReplies time.Duration
	// Done, if not nil, is called exactly once, after both connections are
	// closed, from a goroutine owned by the Engine.
	Done func(Stats)
}

// Stats describes a finished pair.
type Stats struct {
	// BytesIn counts bytes moved client -> backend, Pending included.
	BytesIn int64
	// BytesOut counts bytes moved backend -> client.
	BytesOut int64
	// Err is the first error other than a clean end of stream, if any
	// (a reset, ErrIdle, ErrFirstByte, ErrProxyHeader).
	Err error
	// First says how the backend began: its first bytes, or an end before
	// any. The engine learns it from the first read of the backend -> client
	// direction, which it makes anyway (no extra system call).
	First First
}

// First is how the backend of a pair began (Stats.First).
type First uint8

// The values of First.
const (
	// FirstNone: the pair ended before the backend sent a byte or closed
	// early (the client left first, an idle timeout, CloseAll, or a
	// backend that closed a connection quiet for over EarlyCloseWindow).
	FirstNone First = iota
	// FirstData: the backend sent bytes.
	FirstData
	// FirstHTTP400: the backend's first bytes are an HTTP/1.x 400 status
	// line (as a server that does not read PROXY headers answers one).
	FirstHTTP400
	// FirstClosed: the backend closed or reset the connection before its
	// first byte, while the client's side was open, within
	// EarlyCloseWindow of the start or of the client's last byte.
	FirstClosed
	// FirstTimeout: no byte from the backend within Pair.FirstByte.
	FirstTimeout
)

var firstNames = [...]string{"none", "data", "http_400", "closed", "timeout"}

// String returns the value's name: none, data, http_400, closed, timeout.
func (f First) String() string {
	if int(f) < len(firstNames) {
		return firstNames[f]
	}
	return "unknown"
}

// EarlyCloseWindow bounds FirstClosed: a backend that closes a connection
// without a byte, longer than this after the start or the client's last
// byte, is timing out a quiet client (FirstNone), not refusing it.
const EarlyCloseWindow = time.Second

// Errors in Stats.Err.
var (
	// ErrIdle: the pair was closed by its idle timeout.
	ErrIdle = errors.New("relay: idle timeout")
	// ErrFirstByte: the backend sent nothing within Pair.FirstByte.
	ErrFirstByte = errors.New("relay: no byte from the backend within the first-byte timeout")
	// ErrProxyHeader: a client under Pair.RefuseProxy sent a PROXY header.
	ErrProxyHeader = errors.New("relay: PROXY header from a client that may not send one")
	// ErrShutdown: the pair was still open when the engine's CloseAll (or
	// Close) ended it: in stickyd, when the drain after SIGTERM ran out.
	ErrShutdown = fmt.Errorf("relay: closed at shutdown, still open when the drain ended: %w", net.ErrClosed)
)

// joinFirst returns header followed by pending, the first bytes a backend
// gets, copying only when both are present.
func joinFirst(header, pending []byte) []byte {
	switch {
	case len(header) == 0:
		return pending
	case len(pending) == 0:
		return header
	}
	b := make([]byte, 0, len(header)+len(pending))
	return append(append(b, header...), pending...)
}

// http400 reports whether b starts with an HTTP/1.x 400 status line.
func http400(b []byte) bool {
	return len(b) >= 12 && string(b[:7]) == "HTTP/1." && b[8] == ' ' && string(b[9:12]) == "400"
}

// firstOf classifies the backend's first bytes.
func firstOf(b []byte) First {
	if http400(b) {
		return FirstHTTP400
	}
	return FirstData
}

// proxySignature reports whether b, a client's first bytes, is a PROXY
// header signature (certain) or a prefix of one that more bytes could
// complete (maybe). It matches proxyproto.LooksLikeHeader.
func proxySignature(b []byte) (maybe, certain bool) {
	for _, sig := range [...]string{"PROXY", "\r\n\r\n\x00\r\nQUIT\n"} {
		n := min(len(b), len(sig))
		if n > 0 && string(b[:n]) == sig[:n] {
			return true, n == len(sig)
		}
	}
	return false, false
}

// Engine moves bytes for many pairs.
type Engine interface {
	// Start takes ownership of p's connections and begins relaying. It does
	// not block on I/O. p is passed by value, so that handing a pair over
	// costs the caller no allocation.
	Start(p Pair)
	// CloseAll closes every pair still open (their Done callbacks still
	// run). Used to end the drain period at shutdown.
	CloseAll()
	// Close releases the Engine's own resources after CloseAll. Start must
	// not be called afterwards.
	Close() error
}
