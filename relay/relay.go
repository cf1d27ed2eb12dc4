// Package relay is stickyd's connection engine: it moves bytes between a
// client connection and its backend connection until both directions end.
//
// The rest of stickyd sees only the Engine interface. The handler goroutine
// reads the client address, dials the backend and formats the PROXY header
// (Pair.Header); then it hands both sockets to an Engine with Start and
// returns. From that moment the Engine owns both connections: it closes
// them, and calls Pair.Done exactly once when the pair is finished.
//
// The epoll engine also makes the sockets cheaply: a Socket is a bare
// descriptor (the server accepts with accept4(2) into one), and
// EpollEngine.DialTimeout dials one; Start takes them without a system call
// of its own, where a net.Conn costs it a dup(2), an fcntl(2) and a close(2)
// with its netpoller unregistration.
//
//	eng := relay.NewGoroutineEngine()
//	eng.Start(relay.Pair{Client: c, Backend: b, Pending: buffered, Idle: time.Hour,
//		Done: func(s relay.Stats) { log.Debug("closed", zap.Int64("bytes_in", s.BytesIn)) }})
package relay

import (
	"net"
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
	// (a reset, or ErrIdle).
	Err error
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
