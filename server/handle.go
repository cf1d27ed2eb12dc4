package server

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/logging"
	"github.com/stickyd/stickyd/proxyproto"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
)

// client is what the handshake learned about one connection.
type client struct {
	start   time.Time      // accepted
	peer    netip.AddrPort // the socket's peer
	addr    netip.AddrPort // the real client, announced to the backend
	dst     netip.AddrPort // the address the client connected to
	tlvs    []pp.TLV
	pending []byte // client bytes read during the handshake
	header  []byte // the PROXY header for the backend, sent with pending
	via     string // "socket", "proxy-v1", "proxy-v2", "local", "header"
	// unchecked: an untrusted client silent until its backend was ready;
	// the engine checks its first bytes (relay.Pair.RefuseProxy).
	unchecked bool
	// hold: unchecked on a loop, without the wait for its first bytes: the
	// engine holds the backend's bytes back meanwhile (HoldReplies).
	hold bool
	// upstream: a trusted upstream's header has been read (by a loop).
	upstream bool
	// counted: the client is counted against the per-client limit
	// (admitClient); its close must release it.
	counted bool
}

// newClient is what is known of conn when it is accepted.
func newClient(conn relay.Conn) *client {
	local, peer := relay.AddrPorts(conn)
	return &client{start: time.Now(), peer: peer, addr: peer, dst: local, via: "socket"}
}

// handle runs the handshake for one accepted connection in its own
// goroutine, then hands the pair to the engine. It owns conn until then.
// c is what a loop's handshake learned before it handed conn over
// (loop.go), or nil.
func (s *Server) handle(conn relay.Conn, c *client) {
	if c == nil {
		c = newClient(conn)
	}
	s.metrics.GoroutineHandshakes.Add(1)
	b, bconn, err := s.handshake(conn, c)
	if err != nil {
		s.refuse(conn, c, err)
		return
	}
	s.relay(s.engine, conn, c, b, bconn)
}

// refuse closes a client whose handshake failed, and says why (once per
// cause, as the log sampler allows) unless err is errQuiet.
func (s *Server) refuse(conn relay.Conn, c *client, err error) {
	if (errors.Is(err, errClientLimit) || errors.Is(err, errClientRate)) && s.opts.ClientIPHeader != "" {
		if tc, terr := relay.TCPConn(conn); terr == nil {
			s.replyStatus(tc, "429 Too Many Requests", "too many connections from "+c.addr.Addr().String())
		}
	}
	conn.Close()
	line := accessLine{status: AccessEmpty, peer: c.peer, client: c.addr, via: c.via, took: time.Since(c.start)}
	if !errors.Is(err, errQuiet) {
		line.status, line.end = refusalCause(err), err
	}
	s.logAccess(line) // before connDone: a drain that ends there closes the access log
	s.releaseClient(c.counted, c.addr)
	s.connDone()
	if cause := line.status; cause != AccessEmpty {
		s.log.Warn("connection refused", zap.String(logging.CauseKey, cause),
			zap.Stringer("peer", c.peer), zap.Stringer("client", c.addr), zap.Error(err), s.refusalFix(cause, c.peer, err))
	}
}

// relay hands a client whose handshake succeeded, and its backend, to
// start: the engine, or the loop that accepted the client.
func (s *Server) relay(start relay.Starter, conn relay.Conn, c *client, b *backend.Backend, bconn relay.Conn) {
	s.metrics.Accepted.Add(1)
	// Done captures only what it logs, not c: an idle pair must not keep
	// the handshake's buffers alive (no per-connection logger either: its
	// fields would cost ~1.5 KB per idle connection).
	peer, addr, via, proxied, counted, begun := c.peer, c.addr, c.via, len(c.header) > 0, c.counted, c.start
	var hold time.Duration
	if c.hold {
		hold = s.opts.sniffWait()
	}
	start.Start(relay.Pair{
		Client: conn, Backend: bconn, Header: c.header, Pending: c.pending,
		Idle: s.opts.Idle, Linger: s.opts.Linger, FirstByte: s.opts.FirstByte, RefuseProxy: c.unchecked, HoldReplies: hold,
		Done: func(st relay.Stats) {
			b.Release()
			s.observe(b, st, proxied)
			s.metrics.BytesIn.Add(st.BytesIn)
			s.metrics.BytesOut.Add(st.BytesOut)
			status := AccessRelayed
			if errors.Is(st.Err, relay.ErrProxyHeader) {
				status = HeaderUntrusted
			}
			s.logAccess(accessLine{status: status, peer: peer, client: addr, via: via, backend: b.Name,
				in: st.BytesIn, out: st.BytesOut, took: time.Since(begun), end: st.Err})
			if status == HeaderUntrusted { // its one line, as a handshake's refusal
				s.metrics.headerError(proxyproto.ErrUnexpected)
				s.log.Warn("connection refused", zap.String(logging.CauseKey, HeaderUntrusted), zap.Stringer("peer", peer),
					zap.Stringer("client", addr), zap.String("backend", b.Name), zap.Error(proxyproto.ErrUnexpected),
					s.refusalFix(HeaderUntrusted, peer, nil))
			} else if ce := s.log.Check(zap.DebugLevel, "connection closed"); ce != nil {
				ce.Write(zap.Stringer("peer", peer), zap.Stringer("client", addr), zap.String("via", via),
					zap.String("backend", b.Name), zap.Int64("bytes_in", st.BytesIn),
					zap.Int64("bytes_out", st.BytesOut), zap.Duration("duration", time.Since(begun)),
					zap.NamedError("end", st.Err))
			}
			s.releaseClient(counted, addr)
			s.connDone()
		},
	})
}

// refusalCause names why a handshake failed: the log sampler keeps the
// causes apart, so that a flood of one never hides another.
func refusalCause(err error) string {
	var de dialError
	switch {
	case errors.Is(err, backend.ErrNoBackend):
		return "no_backend"
	case errors.As(err, &de):
		return "dial"
	case errors.Is(err, errClientLimit):
		return "client_limit"
	case errors.Is(err, errClientRate):
		return "client_rate"
	}
	return headerKind(err)
}

// refusalFix is the fix field of a refusal whose cause is a setup that
// does not match the network: a trusted peer that sends no PROXY header,
// a PROXY header from a peer accept_proxy does not list, an HTTP request
// without a usable client_ip_header. Each may also be a client at fault
// (one inside a trusted range that connects directly, one spoofing a
// header, one that bypasses the proxy), so the fix says both; a TLS
// handshake or HTTP/2 in header mode says what to use instead. Other
// causes get none (zap.Skip): a failed dial logs its own.
func (s *Server) refusalFix(cause string, peer netip.AddrPort, err error) zap.Field {
	if errors.Is(err, errHTTPTLS) {
		return zap.String("fix", "terminate TLS before stickyd (at the proxy that sets "+s.opts.ClientIPHeader+"), "+
			"or pass TLS through and carry the client address in PROXY headers instead (--accept-proxy, no --client-ip-header)")
	}
	if errors.Is(err, errHTTP2) {
		return zap.String("fix", "for HTTP/2 or gRPC in cleartext, carry the client address in PROXY headers instead "+
			"(--accept-proxy, no --client-ip-header), or have the proxy in front speak HTTP/1.1 to stickyd; "+
			"--ignore-missing-header relays such clients, routed by their socket address")
	}
	if cause == HeaderHTTPNoAddr {
		h := s.opts.ClientIPHeader
		return zap.String("fix", "the proxy in front must set "+h+" to the client's address "+
			"(nginx: proxy_set_header; HAProxy: option forwardfor, or http-request set-header); "+
			"clients that reach stickyd directly send none: --ignore-missing-header routes them by their socket address")
	}
	if cause == "client_limit" || cause == "client_rate" {
		key := "max_connections_per_client"
		if cause == "client_rate" {
			key = "max_connection_rate_per_client"
		}
		return zap.String("fix", "if many users share this address (a NAT, an office, a mobile carrier), raise "+key+"; "+
			"if it is a proxy or load balancer in front of stickyd, every client arrives from its address: have it send PROXY headers "+
			"and trust it (--accept-proxy), or route by --client-ip-header")
	}
	if !peer.Addr().IsValid() { // not an IP peer: nothing to name
		return zap.Skip()
	}
	switch cause {
	case HeaderMissing:
		return zap.String("fix", "if "+peer.Addr().String()+" is your load balancer, make it send PROXY headers "+
			"(HAProxy: send-proxy-v2 on the server line; nginx stream: proxy_protocol on; AWS NLB: proxy protocol v2 on the target group); "+
			"if clients reach stickyd directly from that range, take it out of accept_proxy")
	case HeaderUntrusted:
		return zap.String("fix", "if "+peer.Addr().String()+" is your load balancer, trust it: --accept-proxy "+
			netip.PrefixFrom(peer.Addr(), peer.Addr().BitLen()).String()+" (accept_proxy); otherwise the client sent a header it may not, and is refused")
	}
	return zap.Skip()
}

// dialError marks an error of the backend dial (its text unchanged).
type dialError struct{ error }

func (e dialError) Unwrap() error { return e.error }

// errQuiet marks handshake failures already logged or not worth a line (the
// client went away).
var errQuiet = errors.New("server: quiet")

// handshake finds the client address, dials its backend and formats the
// PROXY header into c.header (the engine sends it with c.pending, in one
// write). On success it returns the backend and its connection; the caller
// owns conn in every case.
func (s *Server) handshake(conn relay.Conn, c *client) (*backend.Backend, relay.Conn, error) {
	var b *backend.Backend
	var bconn net.Conn
	var err error
	switch {
	case s.opts.ClientIPHeader != "":
		var tc *net.TCPConn
		if tc, err = relay.TCPConn(conn); err == nil {
			err = s.readHTTPClient(tc, c)
		}
		if err == nil {
			b, bconn, err = s.dial(c)
		}
	case s.trusted(c.peer.Addr()):
		if !c.upstream {
			err = s.readUpstreamHeader(conn, c)
		}
		if err == nil {
			b, bconn, err = s.dial(c)
		}
	default:
		b, bconn, err = s.dialWhileSniffing(conn, c)
	}
	if err != nil {
		return nil, nil, err
	}
	return s.formatHeader(c, b, bconn)
}

// formatHeader formats the PROXY header for b into c.header; on error it
// closes bconn.
func (s *Server) formatHeader(c *client, b *backend.Backend, bconn net.Conn) (*backend.Backend, relay.Conn, error) {
	var err error
	if c.header, err = proxyproto.Format(s.opts.SendProxy, c.addr, c.dst, c.tlvs); err != nil {
		bconn.Close()
		b.Release()
		return nil, nil, fmt.Errorf("PROXY header for backend %s: %w", b.Name, err)
	}
	return b, bconn.(relay.Conn), nil
}

// readUpstreamHeader reads the PROXY header a trusted upstream must send,
// after its first bytes in c.pending if a loop read them (loop.go).
func (s *Server) readUpstreamHeader(conn relay.Conn, c *client) error {
	h, rest, err := proxyproto.ReadHeaderAfter(conn, c.pending, s.opts.headerTimeout())
	if errors.Is(err, proxyproto.ErrEmpty) {
		return errQuiet // a port probe
	}
	if err != nil {
		s.metrics.headerError(err)
		return err
	}
	s.useUpstreamHeader(c, h, rest)
	return nil
}

// useUpstreamHeader takes the client's address from a trusted upstream's
// header; rest are the client's first bytes.
func (s *Server) useUpstreamHeader(c *client, h *proxyproto.Header, rest []byte) {
	c.pending, c.upstream = rest, true
	c.tlvs = h.TLVs
	if !s.opts.ForwardTLVs {
		c.tlvs = nil
	}
	if h.Local || !h.Source.IsValid() {
		c.via = "local" // health check or non-IP family: the socket is the client
		return
	}
	c.addr, c.dst = h.Source, h.Destination
	c.via = "proxy-v1"
	if h.Version == 2 {
		c.via = "proxy-v2"
	}
}

func (s *Server) dial(c *client) (*backend.Backend, net.Conn, error) {
	return s.dialBy(c, s.dialer)
}

// dialBy dials c's backend with dial. backend.ErrWouldBlock (from a loop's
// dialer) is returned as it is, counted nowhere.
func (s *Server) dialBy(c *client, dial backend.DialFunc) (*backend.Backend, net.Conn, error) {
	if err := s.admitClient(c); err != nil {
		return nil, nil, err
	}
	b, conn, err := s.backends.Load().DialWith(s.ctx, c.addr.Addr(), dial)
	if errors.Is(err, backend.ErrWouldBlock) {
		return nil, nil, err
	}
	if err != nil {
		s.metrics.NoBackend.Add(1)
		return nil, nil, dialError{err}
	}
	return b, conn, nil
}

// dialWhileSniffing serves an untrusted peer: its first bytes are checked,
// to refuse a PROXY header it has no right to send, around the backend dial.
// What has arrived is read before the dial (a header is then refused without
// dialing) and again once the backend is ready. A client still silent then
// gets Options.SniffWait more to speak, then the pair is relayed anyway, so
// server-speaks-first protocols work (their first exchange waits that long).
// Only that wait blocks on the client: a client that speaks first costs no
// helper goroutine, deadline or netpoller registration.
func (s *Server) dialWhileSniffing(conn relay.Conn, c *client) (*backend.Backend, net.Conn, error) {
	settled, err := s.sniffNow(conn, c)
	if err != nil {
		return nil, nil, err
	}
	b, bconn, err := s.dial(c)
	if err != nil {
		if !settled { // a header sent during the dial is the first news
			if _, serr := s.sniffNow(conn, c); serr != nil {
				err = serr
			}
		}
		return nil, nil, err
	}
	if !settled {
		if settled, err = s.sniffNow(conn, c); err == nil && !settled {
			err = s.sniffWait(conn, c)
		}
	}
	if err != nil {
		bconn.Close()
		b.Release()
		return nil, nil, err
	}
	return b, bconn, nil
}

// sniffSize bounds the client bytes read before the pair is relayed.
const sniffSize = 512

// sniffNow adds what the client has sent so far to c.pending, without
// waiting. It reports settled once that decides the sniff: err refuses the
// client (a PROXY header, it left before a byte, or it left in the middle
// of what could be one), nil lets it through (bytes that cannot start a
// header, or sniffSize of them).
func (s *Server) sniffNow(conn relay.Conn, c *client) (settled bool, err error) {
	if len(c.pending) < sniffSize {
		rerr := readPending(conn, c, sniffSize-len(c.pending))
		if rerr != nil && len(c.pending) == 0 {
			return true, errQuiet // the client left before saying anything
		}
		err = rerr
	}
	maybe, certain := proxyproto.LooksLikeHeader(c.pending)
	switch {
	case certain:
		s.metrics.headerError(proxyproto.ErrUnexpected)
		return true, proxyproto.ErrUnexpected
	case len(c.pending) > 0 && !maybe || len(c.pending) == sniffSize:
		return true, nil // a read error shows again in the engine
	}
	return err != nil, err
}

// sniffWait waits for a client that has not settled the sniff by the time
// its backend is ready: a silent one Options.SniffWait for its first bytes
// (a proxy would send its header at once), one whose bytes could start a
// header the header timeout for the rest.
func (s *Server) sniffWait(conn relay.Conn, c *client) error {
	wait := s.opts.sniffWait()
	if len(c.pending) > 0 {
		wait = s.opts.headerTimeout()
	}
	conn.SetReadDeadline(time.Now().Add(wait))
	defer conn.SetReadDeadline(time.Time{})
	buf := append(make([]byte, 0, sniffSize), c.pending...)
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
		if len(buf) == 0 {
			c.unchecked = true // a silent client: the server speaks first
			return nil
		}
		s.metrics.headerError(proxyproto.ErrTimeout)
		return proxyproto.ErrTimeout
	}
}

// sniffBufs holds the buffers of readPending: c.pending is only allocated
// once bytes have arrived.
var sniffBufs = sync.Pool{New: func() any { return new([sniffSize]byte) }}

// readPending adds to c.pending what conn has received, up to n bytes
// (at most sniffSize), without waiting.
func readPending(conn relay.Conn, c *client, n int) error {
	buf := sniffBufs.Get().(*[sniffSize]byte)
	got, err := relay.ReadNow(conn, buf[:n])
	c.pending = append(c.pending, buf[:got]...)
	sniffBufs.Put(buf)
	return err
}

func (s *Server) trusted(ip netip.Addr) bool {
	for _, p := range s.opts.Trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
