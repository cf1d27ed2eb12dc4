package server

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/proxyproto"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
)

// client is what the handshake learned about one connection.
type client struct {
	peer    netip.AddrPort // the socket's peer
	addr    netip.AddrPort // the real client, announced to the backend
	dst     netip.AddrPort // the address the client connected to
	tlvs    []pp.TLV
	pending []byte // client bytes read during the handshake
	via     string // "socket", "proxy-v1", "proxy-v2", "local", "header"
}

// handle runs the handshake for one accepted connection in its own
// goroutine, then hands the pair to the engine. It owns conn until then.
func (s *Server) handle(conn *net.TCPConn) {
	start := time.Now()
	peer := addrPortOf(conn.RemoteAddr())
	c := &client{peer: peer, addr: peer, dst: addrPortOf(conn.LocalAddr()), via: "socket"}
	log := s.log.With(zap.Stringer("peer", peer))
	b, bconn, err := s.handshake(conn, c)
	if err != nil {
		conn.Close()
		s.connDone()
		if !errors.Is(err, errQuiet) {
			log.Warn("connection refused", zap.Stringer("client", c.addr), zap.Error(err))
		}
		return
	}
	s.metrics.Accepted.Add(1)
	s.engine.Start(&relay.Pair{
		Client: conn, Backend: bconn, Pending: c.pending,
		Idle: s.opts.Idle, Linger: s.opts.Linger,
		Done: func(st relay.Stats) {
			b.Release()
			s.metrics.BytesIn.Add(st.BytesIn)
			s.metrics.BytesOut.Add(st.BytesOut)
			if ce := log.Check(zap.DebugLevel, "connection closed"); ce != nil {
				ce.Write(zap.Stringer("client", c.addr), zap.String("via", c.via),
					zap.String("backend", b.Name), zap.Int64("bytes_in", st.BytesIn),
					zap.Int64("bytes_out", st.BytesOut), zap.Duration("duration", time.Since(start)),
					zap.NamedError("end", st.Err))
			}
			s.connDone()
		},
	})
}

// errQuiet marks handshake failures already logged or not worth a line (the
// client went away).
var errQuiet = errors.New("server: quiet")

// handshake finds the client address, dials its backend and writes the
// PROXY header. On success it returns the backend and its connection with
// the header written; the caller owns conn in every case.
func (s *Server) handshake(conn *net.TCPConn, c *client) (*backend.Backend, relay.Conn, error) {
	var b *backend.Backend
	var bconn net.Conn
	var err error
	switch {
	case s.opts.ClientIPHeader != "":
		if err = s.readHTTPClient(conn, c); err == nil {
			b, bconn, err = s.dial(c)
		}
	case s.trusted(c.peer.Addr()):
		if err = s.readUpstreamHeader(conn, c); err == nil {
			b, bconn, err = s.dial(c)
		}
	default:
		b, bconn, err = s.dialWhileSniffing(conn, c)
	}
	if err != nil {
		return nil, nil, err
	}
	if err := proxyproto.Write(bconn, s.opts.SendProxy, c.addr, c.dst, c.tlvs); err != nil {
		bconn.Close()
		b.Release()
		return nil, nil, errors.New("write PROXY header to backend " + b.Name + ": " + err.Error())
	}
	return b, bconn.(relay.Conn), nil
}

// readUpstreamHeader reads the PROXY header a trusted upstream must send.
func (s *Server) readUpstreamHeader(conn *net.TCPConn, c *client) error {
	h, rest, err := proxyproto.ReadHeader(conn, s.opts.headerTimeout())
	if errors.Is(err, proxyproto.ErrEmpty) {
		return errQuiet // a port probe
	}
	if err != nil {
		s.metrics.headerError(err)
		return err
	}
	c.pending = rest
	c.tlvs = h.TLVs
	if !s.opts.ForwardTLVs {
		c.tlvs = nil
	}
	if h.Local || !h.Source.IsValid() {
		c.via = "local" // health check or non-IP family: the socket is the client
		return nil
	}
	c.addr, c.dst = h.Source, h.Destination
	c.via = "proxy-v1"
	if h.Version == 2 {
		c.via = "proxy-v2"
	}
	return nil
}

func (s *Server) dial(c *client) (*backend.Backend, net.Conn, error) {
	b, conn, err := s.backends.Load().Dial(s.ctx, c.addr.Addr())
	if err != nil {
		s.metrics.NoBackend.Add(1)
		return nil, nil, err
	}
	return b, conn, nil
}

// dialWhileSniffing serves an untrusted peer: the backend is dialed at once,
// and meanwhile the client's first bytes are read to refuse a PROXY header
// it has no right to send. A client still silent when the backend is ready
// gets Options.SniffWait more to speak; then the pair is relayed anyway, so
// server-speaks-first protocols work (their first exchange waits that long).
func (s *Server) dialWhileSniffing(conn *net.TCPConn, c *client) (*backend.Backend, net.Conn, error) {
	type dialed struct {
		b    *backend.Backend
		conn net.Conn
		err  error
	}
	sniffing := atomic.Bool{}
	sniffing.Store(true)
	result := make(chan dialed, 1)
	interrupted := make(chan struct{})
	go func() {
		b, bconn, err := s.dial(c)
		if sniffing.CompareAndSwap(true, false) {
			conn.SetReadDeadline(time.Unix(1, 0)) // interrupt the sniffing read
		}
		close(interrupted)
		result <- dialed{b, bconn, err}
	}()
	sniffErr := s.sniff(conn, c, &sniffing, interrupted)
	sniffing.Store(false)
	d := <-result // after this, nobody else touches conn's deadline
	conn.SetReadDeadline(time.Time{})
	if sniffErr == nil {
		sniffErr = d.err
	}
	if sniffErr != nil {
		if d.err == nil {
			d.conn.Close()
			d.b.Release()
		}
		return nil, nil, sniffErr
	}
	return d.b, d.conn, nil
}

// sniff reads what the client sends before the backend is ready, into
// c.pending. It fails if those bytes are a PROXY header.
func (s *Server) sniff(conn *net.TCPConn, c *client, sniffing *atomic.Bool, interrupted <-chan struct{}) error {
	conn.SetReadDeadline(time.Now().Add(s.opts.headerTimeout()))
	buf := make([]byte, 0, 512)
	extended := false
	for {
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		c.pending = buf
		maybe, certain := proxyproto.LooksLikeHeader(buf)
		if certain {
			s.metrics.headerError(proxyproto.ErrUnexpected)
			return proxyproto.ErrUnexpected
		}
		if len(buf) > 0 && !maybe || len(buf) == cap(buf) {
			return nil
		}
		if err == nil {
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			if len(buf) == 0 {
				return errQuiet // the client left before saying anything
			}
			return err
		}
		if extended || sniffing.Load() {
			if len(buf) == 0 {
				return nil // a silent client: the server speaks first
			}
		} else {
			// The backend is ready. Wait a moment for a client that has
			// not spoken yet (a proxy sends its header at once), or the
			// header timeout for one whose first bytes could start one.
			<-interrupted // the dial's past deadline is set; now replace it
			extended = true
			wait := s.opts.sniffWait()
			if len(buf) > 0 {
				wait = s.opts.headerTimeout()
			}
			conn.SetReadDeadline(time.Now().Add(wait))
			continue
		}
		s.metrics.headerError(proxyproto.ErrTimeout)
		return proxyproto.ErrTimeout
	}
}

func (s *Server) trusted(ip netip.Addr) bool {
	for _, p := range s.opts.Trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// addrPortOf returns a socket address with IPv4-mapped IPv6 normalised.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
