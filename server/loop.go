package server

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/proxyproto"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
)

// Accept on the loops. With an engine whose loops accept (the epoll
// engine, relay.LoopAcceptor), Serve gives each loop a listening socket of
// its own (relay.ListenGroup, SO_REUSEPORT), and a client's handshake runs
// on the loop that accepted it, as far as it can without waiting: the
// sniff of what the client has sent (or a trusted upstream's PROXY header,
// when it has arrived whole), the pick and connect(2) of a backend on a
// loopback address or a unix socket (which completes inside the call), the
// PROXY header; then the pair starts on that same loop. One connection,
// one thread, no hand-off: as nginx and HAProxy do with a listener per
// worker.
//
// What would wait goes to a handshake goroutine, as with the goroutine
// accept loop (Serve's other path): an upstream's header still on its way,
// a backend that is not on loopback (or given by host name), and a client
// whose first bytes could start a PROXY header but do not tell yet. A
// client still silent once its backend is connected is relayed at once
// with relay.Pair.RefuseProxy and HoldReplies: the engine refuses its
// first bytes if they are a PROXY header (the backend gets none), and
// holds the backend's bytes back until they pass, or Options.SniffWait.

// testHookAccepting, if set (by tests), runs between the loops' start and
// their record (addAccepting).
var testHookAccepting func()

// serveLoops accepts on lns from the engine's loops until Shutdown.
func (s *Server) serveLoops(la relay.LoopAcceptor, lns []net.Listener) error {
	x, err := la.Accept(lns, loopAcceptor{s})
	if err != nil { // a descriptor could not be duplicated (EMFILE?)
		s.log.Warn("event loops cannot accept; one goroutine accepts for all", zap.Error(err))
		for _, ln := range lns[1:] {
			go s.serve(ln)
		}
		return s.serve(lns[0])
	}
	if !s.track(x) {
		x.Close()
		return ErrServerClosed
	}
	if testHookAccepting != nil {
		testHookAccepting()
	}
	s.addAccepting(x)
	// The loops accepted from the moment Accept returned: a slot freed
	// before x was recorded (a client accepted and gone at once) found
	// nothing to resume, and a loop that had paused at MaxConnections
	// meanwhile would wait for the next slot freed, however long.
	x.Resume()
	if n := s.spread.Load(); n > 0 {
		x.Spread(int(n))
	}
	<-x.Done()
	s.untrack(x)
	return ErrServerClosed
}

// loopGroup returns the listeners for the loops of la: ln, more (inherited
// from an upgrade), and new sockets of ln's SO_REUSEPORT group up to one
// per loop. False: ln cannot have a group (the caller accepts the old way).
func (s *Server) loopGroup(la relay.LoopAcceptor, ln net.Listener, more []net.Listener) ([]net.Listener, bool) {
	lns := append([]net.Listener{ln}, more...)
	need := la.Loops() - len(lns)
	if need <= 0 {
		return lns, true
	}
	group, err := relay.ListenGroup(ln, need+1)
	if err != nil {
		s.log.Warn("cannot give each loop a listening socket; one goroutine accepts for all",
			zap.Stringer("listen", ln.Addr()), zap.Error(err))
		return nil, false
	}
	return append(lns, group[1:]...), true
}

// addAccepting records x for Resume (releaseSlot) and for Listeners.
func (s *Server) addAccepting(x *relay.Accepting) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.accepting.Load()
	next := []*relay.Accepting{x}
	if old != nil {
		next = append(next, *old...)
	}
	s.accepting.Store(&next)
}

// SpreadAccept makes the first n event loops accept, from now on and on
// the listeners Serve takes later (relay.Accepting.Spread): the daemon
// follows its adaptive GOMAXPROCS, so that at low load the loops beyond
// the Ps park instead of each waking for its share of the connections.
// Without loops that accept, it does nothing.
func (s *Server) SpreadAccept(n int) {
	s.spread.Store(int32(n))
	if xs := s.accepting.Load(); xs != nil {
		for _, x := range *xs {
			x.Spread(n)
		}
	}
}

// resumeAccepting lets loops paused at MaxConnections accept again.
func (s *Server) resumeAccepting() {
	if xs := s.accepting.Load(); xs != nil {
		for _, x := range *xs {
			x.Resume()
		}
	}
}

// Listeners returns the listening sockets the server accepts on, those of
// the loops' groups included (an upgrade hands them all over).
func (s *Server) Listeners() []net.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lns []net.Listener
	for c := range s.listeners {
		switch c := c.(type) {
		case net.Listener:
			lns = append(lns, c)
		case *relay.Accepting:
			lns = append(lns, c.Listeners()...)
		}
	}
	return lns
}

// loopAcceptor is the server's side of accepting on the loops.
type loopAcceptor struct{ s *Server }

// Admit implements relay.Acceptor: a connection slot (MaxConnections).
func (a loopAcceptor) Admit() bool { return a.s.tryAcquire() }

// Unadmit implements relay.Acceptor. The slot may be the one another loop,
// paused at the cap meanwhile, waits for: it is resumed.
func (a loopAcceptor) Unadmit() { a.s.releaseSlot() }

// AcceptError implements relay.Acceptor: the pause is the goroutine accept
// loop's backoff, from 5 ms to 1 s while errors follow each other (a
// connection accepted starts it again).
func (a loopAcceptor) AcceptError(err error) time.Duration {
	d := nextBackoff(time.Duration(a.s.acceptBackoff.Load()))
	a.s.acceptBackoff.Store(int64(d))
	a.s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("backoff", d))
	return d
}

// Handle implements relay.Acceptor: the handshake on the loop, as far as
// it goes without waiting (see the top of this file).
func (a loopAcceptor) Handle(conn *relay.Socket, on relay.Starter) {
	s := a.s
	s.conns.Add(1)
	s.open.Add(1)
	if s.acceptBackoff.Load() != 0 {
		s.acceptBackoff.Store(0)
	}
	c := newClient(conn)
	s.metrics.LoopHandshakes.Add(1) // undone by a hand-over
	settled, err := false, error(nil)
	if s.trusted(c.peer.Addr()) {
		if settled, err = s.upstreamHeaderNow(conn, c); err == nil && !settled {
			s.handOver(conn, c) // the rest of the header is on its way
			return
		}
	} else {
		settled, err = s.sniffNow(conn, c)
	}
	if err != nil {
		s.refuse(conn, c, err)
		return
	}
	b, bconn, settled, err := s.dialNowSniffing(conn, c, settled)
	switch {
	case errors.Is(err, backend.ErrWouldBlock):
		s.handOver(conn, c) // dialed from a goroutine, which may wait
		return
	case err != nil:
		s.refuse(conn, c, err)
		return
	case !settled && len(c.pending) > 0: // could start a header: wait for the rest
		s.spawnSniff(conn, c, b, bconn)
		return
	}
	// Silent so far: the engine checks its first bytes, and holds the
	// backend's back until then or Options.SniffWait.
	c.unchecked, c.hold = !settled, !settled
	relayed, rconn, err := s.formatHeader(c, b, bconn)
	if err != nil {
		s.refuse(conn, c, err)
		return
	}
	s.relay(on, conn, c, relayed, rconn)
}

// dialNowSniffing dials c's backend from the loop (backend.ErrWouldBlock
// where that would wait) and, for a client whose sniff is not settled,
// looks again at what it has sent meanwhile: a header sent during the dial
// refuses it (the backend connection closed), and is the first news when
// the dial failed.
func (s *Server) dialNowSniffing(conn relay.Conn, c *client, settled bool) (*backend.Backend, net.Conn, bool, error) {
	b, bconn, err := s.dialBy(c, s.loopDialer)
	switch {
	case errors.Is(err, backend.ErrWouldBlock) || settled:
	case err == nil:
		if settled, err = s.sniffNow(conn, c); err != nil {
			bconn.Close()
			b.Release()
		}
	default:
		if _, serr := s.sniffNow(conn, c); serr != nil {
			err = serr
		}
	}
	return b, bconn, settled, err
}

// upstreamHeaderNow reads what a trusted upstream has sent so far (into
// c.pending) and, when that holds its whole PROXY header, uses it: true.
// False with a nil error: the rest is to come (ReadHeaderAfter goes on
// from c.pending).
func (s *Server) upstreamHeaderNow(conn relay.Conn, c *client) (bool, error) {
	rerr := readPending(conn, c, sniffSize)
	raw, rest, err := proxyproto.Split(c.pending)
	switch {
	case err != nil:
		s.metrics.headerError(err)
		return false, err
	case raw == nil && rerr != nil && len(c.pending) == 0:
		return false, errQuiet // a port probe
	case raw == nil:
		return false, nil // the goroutine meets a read error again
	}
	h, err := proxyproto.Parse(raw)
	if err != nil {
		s.metrics.headerError(err)
		return false, err
	}
	s.useUpstreamHeader(c, h, rest)
	return true, nil
}

// handOver gives a loop's handshake to a goroutine (which counts it).
func (s *Server) handOver(conn relay.Conn, c *client) {
	s.metrics.LoopHandshakes.Add(-1)
	s.spawn(conn, c)
}

// dialNow is the loop's backend.DialFunc: the engine's DialNow, which only
// connects where that takes no wait.
func (s *Server) dialNow(_ context.Context, network, address string, _ time.Duration) (net.Conn, error) {
	conn, err := s.loopDial(network, address)
	if errors.Is(err, relay.ErrWouldBlock) {
		return nil, backend.ErrWouldBlock
	}
	return conn, err
}

// spawnSniff waits, on a goroutine, for the rest of what a client's first
// bytes could start (a PROXY header it may not send), then relays it.
func (s *Server) spawnSniff(conn relay.Conn, c *client, b *backend.Backend, bconn net.Conn) {
	s.metrics.LoopHandshakes.Add(-1)
	s.metrics.GoroutineHandshakes.Add(1)
	go func() {
		if err := s.sniffWait(conn, c); err != nil {
			bconn.Close()
			b.Release()
			s.refuse(conn, c, err)
			return
		}
		relayed, rconn, err := s.formatHeader(c, b, bconn)
		if err != nil {
			s.refuse(conn, c, err)
			return
		}
		s.relay(s.engine, conn, c, relayed, rconn)
	}()
}
