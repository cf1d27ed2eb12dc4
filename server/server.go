// Package server is stickyd's accept loop and per-connection handshake: it
// accepts a client, finds its real address (socket, trusted upstream PROXY
// header, or an HTTP header), asks the backend set for that address's
// backend, writes the PROXY header to it and hands both sockets to the relay
// engine. With the epoll engine, each event loop accepts and handshakes its
// own clients (loop.go); handshake goroutines take what would wait.
//
//	srv := server.New(server.Options{...}, set, relay.NewGoroutineEngine(), log)
//	go srv.Serve(ln)          // returns ErrServerClosed after Shutdown
//	srv.Shutdown(ctx)         // stop accepting, drain until ctx is done, then close the rest
package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server: closed")

// Options configure a Server. Zero values mean the documented defaults.
type Options struct {
	// Trusted are the upstreams stickyd believes: peers inside must send a
	// PROXY header and others must not; in ClientIPHeader mode they are the
	// trusted HTTP proxy hops instead.
	Trusted []netip.Prefix
	// HeaderTimeout bounds reading an upstream PROXY header or an HTTP
	// header block. Default 5s.
	HeaderTimeout time.Duration
	// SendProxy is the PROXY version written to backends: 2, 1, or 0.
	SendProxy byte
	// ForwardTLVs copies the upstream's v2 TLVs into the backend's header.
	ForwardTLVs bool
	// ClientIPHeader, when set, routes by this HTTP request header.
	ClientIPHeader string
	// IgnoreMissingHeader routes by the socket address when ClientIPHeader
	// is absent, instead of answering 400.
	IgnoreMissingHeader bool
	// MaxHeaderBytes bounds the HTTP header block read in ClientIPHeader
	// mode. Default 16 KiB.
	MaxHeaderBytes int
	// SniffWait is how long a silent untrusted client may take to send its
	// first bytes once its backend is ready, so that a PROXY header it
	// sends is refused rather than relayed. Default 100ms; it delays only
	// server-speaks-first protocols, once per connection.
	SniffWait time.Duration
	// Idle and Linger are passed to the relay engine.
	Idle, Linger time.Duration
	// FirstByte, if not zero, closes a connection whose backend has sent
	// nothing this long after the connection was relayed or the client's
	// last byte (relay.Pair.FirstByte). Zero: a silent backend holds its
	// client until Idle, if set.
	FirstByte time.Duration
	// MaxConnections caps open client connections; accepting pauses at the
	// cap (clients wait in the kernel backlog). 0 means no cap.
	MaxConnections int
	// MaxPerClient caps one client's open connections (clients.go): an
	// IPv4 address or an IPv6 /64, after PROXY or HTTP header. The client
	// over it is refused before a backend is dialed (HTTP header mode: with
	// 429). 0 means no cap; SetMaxPerClient changes it.
	MaxPerClient int
	// MaxRatePerClient caps the connections one client may open in a
	// second, counted as MaxPerClient counts (clients.go); the client over
	// it is refused the same way until its rate falls. 0 means no cap;
	// SetMaxRatePerClient changes it.
	MaxRatePerClient int
}

func (o Options) headerTimeout() time.Duration {
	if o.HeaderTimeout <= 0 {
		return 5 * time.Second
	}
	return o.HeaderTimeout
}

func (o Options) sniffWait() time.Duration {
	if o.SniffWait <= 0 {
		return 100 * time.Millisecond
	}
	return o.SniffWait
}

func (o Options) maxHeaderBytes() int {
	if o.MaxHeaderBytes <= 0 {
		return 16 << 10
	}
	return o.MaxHeaderBytes
}

// Server accepts client connections and relays them to backends.
type Server struct {
	opts     Options
	backends atomic.Pointer[backend.Set]
	engine   relay.Engine
	sockets  relay.SocketMaker // the engine, if it makes its own sockets; nil: package net's
	dialer   backend.DialFunc  // sockets.DialTimeout, if any
	log      *zap.Logger
	metrics  *Metrics

	slots chan struct{} // one per open connection when MaxConnections > 0

	ctx    context.Context // cancelled when the drain period ends
	cancel context.CancelFunc

	mu            sync.Mutex
	listeners     map[io.Closer]struct{}                          // net.Listeners, *relay.Accepting; guarded by mu
	closing       bool                                            // guarded by mu
	accepting     atomic.Pointer[[]*relay.Accepting]              // the loops' (loop.go); written under mu
	loopDial      func(network, address string) (net.Conn, error) // the engine's DialNow
	loopDialer    backend.DialFunc                                // s.dialNow, made once
	acceptBackoff atomic.Int64                                    // the loops' accept error backoff (ns); 0 after an accept
	spread        atomic.Int32                                    // SpreadAccept's loops; 0: all

	conns sync.WaitGroup // handshakes and relayed pairs
	open  atomic.Int64   // client connections open now

	handoff chan handoff // to a handshake goroutine waiting for work
	waiting atomic.Int32 // handshake goroutines waiting on handoff

	capLogged atomic.Int64 // unix nanos of the last "max_connections reached" line
	capWaits  atomic.Int64 // pauses at the cap since that line
	capFull   atomic.Bool  // at the cap since the last slot taken: the pause is counted

	hints hintLimiter // the PROXY hint, per backend

	clients clientTable // open connections per client (MaxPerClient)

	access atomic.Pointer[zap.Logger] // the access log (access.go); nil: off
}

// New returns a Server relaying to the backends in set through engine.
// The Server owns engine and closes it at the end of Shutdown.
func New(opts Options, set *backend.Set, engine relay.Engine, log *zap.Logger) *Server {
	s := &Server{opts: opts, engine: engine, log: log, metrics: NewMetrics(),
		listeners: make(map[io.Closer]struct{}), handoff: make(chan handoff)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.backends.Store(set)
	if sm, ok := engine.(relay.SocketMaker); ok {
		s.sockets, s.dialer = sm, sm.DialTimeout
	}
	if la, ok := engine.(relay.LoopAcceptor); ok {
		s.loopDial, s.loopDialer = la.DialNow, s.dialNow
	}
	s.SetMaxPerClient(opts.MaxPerClient)
	s.SetMaxRatePerClient(opts.MaxRatePerClient)
	if opts.MaxConnections > 0 {
		s.slots = make(chan struct{}, opts.MaxConnections)
	}
	return s
}

// SetBackends swaps in a new backend set (reload). Connections already
// established keep their backend.
func (s *Server) SetBackends(set *backend.Set) { s.backends.Store(set) }

// Backends returns the current backend set.
func (s *Server) Backends() *backend.Set { return s.backends.Load() }

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Open returns the number of client connections open now.
func (s *Server) Open() int64 { return s.open.Load() }

// Serve accepts connections on ln until Shutdown or a permanent accept
// error. Temporary errors (EMFILE, ECONNABORTED) back off from 5 ms to 1 s.
// Serve closes ln before returning. more are listeners of ln's
// SO_REUSEPORT group handed over by an upgrade (Listeners): they are
// served too.
//
// With an engine whose loops accept (relay.LoopAcceptor) and no
// ClientIPHeader, each loop accepts on a socket of ln's group and runs
// the handshakes of its clients itself (loop.go); otherwise this goroutine
// accepts and handshake goroutines take each client.
func (s *Server) Serve(ln net.Listener, more ...net.Listener) error {
	if la, ok := s.engine.(relay.LoopAcceptor); ok && s.opts.ClientIPHeader == "" {
		if lns, ok := s.loopGroup(la, ln, more); ok {
			return s.serveLoops(la, lns)
		}
	}
	for _, m := range more {
		go s.Serve(m)
	}
	return s.serve(ln)
}

// serve is the goroutine accept loop.
func (s *Server) serve(ln net.Listener) error {
	if s.sockets != nil && s.opts.ClientIPHeader == "" { // the HTTP path reads a *net.TCPConn
		ln = s.sockets.Listener(ln)
	}
	if !s.track(ln) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.untrack(ln)
	var backoff time.Duration
	for {
		if !s.acquire() {
			return ErrServerClosed
		}
		conn, err := ln.Accept()
		if err != nil {
			s.releaseSlot()
			if s.isClosing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Temporary() || isTemporaryAccept(err) {
				backoff = nextBackoff(backoff)
				s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		cc, ok := relay.ClientConn(conn)
		if !ok {
			conn.Close()
			s.releaseSlot()
			continue
		}
		s.conns.Add(1)
		s.open.Add(1)
		s.spawn(cc, nil)
	}
}

// handoff is a connection for a handshake goroutine, with what is known of
// it (nil: nothing yet).
type handoff struct {
	conn relay.Conn
	c    *client
}

// maxWaiting bounds the handshake goroutines kept waiting for a connection.
const maxWaiting = 64

// spawn runs the handshake of c on a goroutine of its own: one that has
// finished a handshake and waits for the next, or a new one. A new
// goroutine starts with a 2 KB stack that the handshake outgrows, copying
// it (~6% of the CPU per short connection); a waiting one has grown it
// already. At most maxWaiting wait, until the drain period ends.
func (s *Server) spawn(conn relay.Conn, c *client) {
	h := handoff{conn, c}
	select {
	case s.handoff <- h:
	default:
		go s.handshakes(h)
	}
}

func (s *Server) handshakes(h handoff) {
	for {
		s.handle(h.conn, h.c)
		if s.waiting.Add(1) > maxWaiting {
			s.waiting.Add(-1)
			return
		}
		select {
		case h = <-s.handoff:
			s.waiting.Add(-1)
		case <-s.ctx.Done():
			s.waiting.Add(-1)
			return
		}
	}
}

func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return 5 * time.Millisecond
	}
	return min(2*d, time.Second)
}

// acquire takes a connection slot, blocking at MaxConnections. It returns
// false once the server is shutting down.
func (s *Server) acquire() bool {
	if s.tryAcquire() {
		return true
	}
	select {
	case s.slots <- struct{}{}:
		s.capFull.Store(false)
		return true
	case <-s.ctx.Done():
		return false
	}
}

// tryAcquire takes a connection slot if one is free; at MaxConnections it
// returns false, and counts and reports a pause once until a slot is
// taken again (the loops ask again, and ask each, at one cap).
func (s *Server) tryAcquire() bool {
	if s.slots == nil {
		return true
	}
	select {
	case s.slots <- struct{}{}:
		if s.capFull.Load() {
			s.capFull.Store(false)
		}
		return true
	default:
		if !s.capFull.Swap(true) {
			s.metrics.LimitWaits.Add(1)
			s.logCapReached()
		}
		return false
	}
}

// capLogEvery is the least time between two "max_connections reached"
// lines; the pauses in between are counted in the next one.
const capLogEvery = time.Minute

// logCapReached says, at most once per capLogEvery, that accepting paused
// at MaxConnections.
func (s *Server) logCapReached() {
	n := s.capWaits.Add(1)
	now := time.Now().UnixNano()
	last := s.capLogged.Load()
	if last != 0 && now-last < int64(capLogEvery) || !s.capLogged.CompareAndSwap(last, now) {
		return
	}
	s.capWaits.Add(-n)
	s.log.Warn("max_connections reached; accepting paused, new clients wait in the listen backlog",
		zap.Int("max_connections", s.opts.MaxConnections), zap.Int64("open", s.open.Load()),
		zap.Int64("pauses", n), zap.Duration("next_report_after", capLogEvery),
		zap.String("fix", "raise max_connections and the open-file limit, or add stickyd instances"))
}

func (s *Server) releaseSlot() {
	if s.slots != nil {
		<-s.slots
		s.resumeAccepting()
	}
}

// connDone releases everything a client connection held.
func (s *Server) connDone() {
	s.open.Add(-1)
	s.releaseSlot()
	s.conns.Done()
}

func (s *Server) track(ln io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.listeners[ln] = struct{}{}
	return true
}

func (s *Server) untrack(ln io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.listeners, ln)
	ln.Close()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown stops accepting at once, waits for open connections to finish
// until ctx is done, then closes the rest. It returns ctx.Err() when
// connections had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	s.log.Info("draining", zap.Int64("open", s.open.Load()))

	drained := make(chan struct{})
	go func() { s.conns.Wait(); close(drained) }()
	var err error
	select {
	case <-drained:
	case <-ctx.Done():
		err = ctx.Err()
		s.log.Warn("drain timeout; closing open connections", zap.Int64("open", s.open.Load()))
		s.cancel()
		s.engine.CloseAll()
		<-drained
	}
	s.cancel()
	s.engine.Close()
	return err
}
