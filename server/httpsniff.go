package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/stickyd/stickyd/proxyproto"
)

var (
	errHTTPTimeout  = errors.New("server: HTTP header block not complete before the timeout")
	errHTTPTooLarge = errors.New("server: HTTP header block over the size limit")
	errNoClientIP   = errors.New("server: no client address in the HTTP request")
	// errHTTPMalformed: a header block RFC 9112 says to reject with 400
	// (obs-fold, whitespace before a colon, bare CR or LF): parsers
	// disagree on such a block, so stickyd could route by a header the
	// backend does not see.
	errHTTPMalformed = errors.New("server: malformed HTTP header block")
	// errHTTPTLS: the client opened with a TLS handshake, which header
	// mode cannot read (counted as malformed).
	errHTTPTLS = fmt.Errorf("%w: a TLS handshake, not an HTTP request (client_ip_header reads plain HTTP)", errHTTPMalformed)
)

// errHTTP2: the client opened with HTTP/2's cleartext preface (h2c with
// prior knowledge, as gRPC does), whose headers header mode cannot read:
// no client address (with IgnoreMissingHeader it is relayed as any
// request without one).
var errHTTP2 = fmt.Errorf("%w: HTTP/2 (the h2c preface), whose headers header mode cannot read (HTTP/1.x only)", errNoClientIP)

// http2Preface is how HTTP/2 over cleartext with prior knowledge opens.
var http2Preface = []byte("PRI * HTTP/2.0\r\n")

// looksLikeTLS reports whether b starts a TLS handshake record (content
// type 22, protocol major version 3): no HTTP request starts with 0x16.
func looksLikeTLS(b []byte) bool {
	return len(b) >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

// readHTTPClient reads the first request's header block (bounded in size
// and time) and takes the client address from the configured header. Every
// byte read stays in c.pending and reaches the backend untouched.
func (s *Server) readHTTPClient(conn *net.TCPConn, c *client) error {
	conn.SetReadDeadline(time.Now().Add(s.opts.headerTimeout()))
	limit := s.opts.maxHeaderBytes()
	buf := make([]byte, 0, 2048)
	searched := 0 // buf[:searched] holds no end of the block
	checked := 0  // buf[:checked] holds no bare CR or LF
	for {
		if _, certain := proxyproto.LooksLikeHeader(buf); certain {
			// Header mode reads no PROXY header: relaying it would put a
			// second, client-chosen header behind ours.
			s.metrics.headerError(proxyproto.ErrUnexpected)
			return proxyproto.ErrUnexpected
		}
		if looksLikeTLS(buf) { // no 400: the client would not read plain text
			s.metrics.headerError(errHTTPTLS)
			return errHTTPTLS
		}
		if bytes.HasPrefix(buf, http2Preface) && !s.opts.IgnoreMissingHeader { // nor would an HTTP/2 client
			s.metrics.headerError(errHTTP2)
			return errHTTP2
		}
		end := bytes.Index(buf[searched:], []byte("\r\n\r\n"))
		blockEnd := len(buf)
		if end >= 0 {
			blockEnd = searched + end + 4
		}
		if err := lineEndError(buf[:blockEnd], checked); err != nil {
			return s.refuseMalformed(conn, err)
		}
		if end >= 0 {
			conn.SetReadDeadline(time.Time{})
			c.pending = buf
			if err := fieldLinesError(buf[:blockEnd-2]); err != nil {
				return s.refuseMalformed(conn, err)
			}
			return s.routeByHeader(conn, c, buf[:blockEnd-2])
		}
		searched = max(0, len(buf)-3)
		checked = max(0, len(buf)-1) // a CR at the end waits for its LF
		if len(buf) >= limit {
			s.metrics.headerError(errHTTPTooLarge)
			s.reply400(conn, fmt.Sprintf("request header block over %d bytes", limit))
			return fmt.Errorf("%w (%d bytes)", errHTTPTooLarge, limit)
		}
		var err error
		if buf, err = s.readMore(conn, buf, limit); err != nil {
			return err
		}
	}
}

// readMore reads what the client sends next into buf (grown up to limit)
// and returns the longer buf. An error means the block cannot complete: a
// timeout (counted), a quiet close before any byte (errQuiet), or another
// read error.
func (s *Server) readMore(conn *net.TCPConn, buf []byte, limit int) ([]byte, error) {
	if len(buf) == cap(buf) {
		buf = append(buf, make([]byte, min(cap(buf), limit-len(buf)))...)[:len(buf)]
	}
	n, err := conn.Read(buf[len(buf):min(cap(buf), limit)])
	buf = buf[:len(buf)+n]
	if err == nil || n > 0 {
		return buf, nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.metrics.headerError(errHTTPTimeout)
		return buf, fmt.Errorf("%w after %d bytes", errHTTPTimeout, len(buf))
	}
	if len(buf) == 0 {
		return buf, errQuiet
	}
	return buf, fmt.Errorf("read HTTP header block: %w", err)
}

// routeByHeader sets c.addr from the header block, or answers 400.
func (s *Server) routeByHeader(conn *net.TCPConn, c *client, block []byte) error {
	trusted := s.trusted
	if len(s.opts.Trusted) == 0 {
		// No hops listed: like the seed module, believe the nearest proxy.
		trusted = func(ip netip.Addr) bool { return ip == c.peer.Addr() }
	}
	ip, err := ClientIP(block, s.opts.ClientIPHeader, c.peer.Addr(), trusted)
	if err == nil {
		if ip != c.peer.Addr() { // else the socket address, port included, stands
			c.addr = netip.AddrPortFrom(ip, 0)
			c.via = "header"
		}
		return nil
	}
	if s.opts.IgnoreMissingHeader {
		return nil
	}
	s.metrics.headerError(errNoClientIP)
	s.reply400(conn, err.Error())
	return err
}

// refuseMalformed answers 400 to a block that breaks RFC 9112's syntax.
func (s *Server) refuseMalformed(conn *net.TCPConn, err error) error {
	s.metrics.headerError(err)
	s.reply400(conn, strings.TrimPrefix(err.Error(), "server: "))
	return err
}

// lineEndError reports a bare LF, or a CR not followed by LF, in
// buf[from:] (a CR in the last byte waits for the next). RFC 9112 section
// 2.2 lets a recipient accept a bare LF; stickyd refuses both, at once, so
// that its idea of where a line ends is the backend's.
func lineEndError(buf []byte, from int) error {
	for i := from; i < len(buf); i++ {
		switch {
		case buf[i] == '\n' && (i == 0 || buf[i-1] != '\r'):
			return fmt.Errorf("%w: bare LF at byte %d (lines must end with CRLF)", errHTTPMalformed, i)
		case buf[i] == '\r' && i+1 < len(buf) && buf[i+1] != '\n':
			return fmt.Errorf("%w: CR without LF at byte %d", errHTTPMalformed, i)
		}
	}
	return nil
}

// fieldLinesError checks the field lines of a header block (request line,
// then CRLF-terminated lines) against RFC 9112 section 5: a line starting
// with whitespace is obs-fold (5.2) and whitespace between the field name
// and the colon is forbidden (5.1); both must be answered with 400.
func fieldLinesError(block []byte) error {
	lines := strings.Split(strings.TrimLeft(string(block), "\r\n"), "\r\n")
	for _, line := range lines[1:] { // lines[0] is the request line
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			return fmt.Errorf("%w: obs-fold (a field line starting with whitespace) is not allowed", errHTTPMalformed)
		}
		name, _, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("%w: field line without a colon: %q", errHTTPMalformed, clipString(line, 64))
		}
		if !isToken(name) {
			return fmt.Errorf("%w: invalid field name %q (no whitespace before the colon)", errHTTPMalformed, clipString(name, 64))
		}
	}
	return nil
}

// isToken reports whether s is an RFC 9110 token (a field name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// reply400 answers a request stickyd will not relay, then closes its write
// side and discards what the client still sends for a moment, so that the
// close does not reset the connection before the client has read the answer
// (a lingering close, as in net/http and nginx). The caller closes conn.
func (s *Server) reply400(conn *net.TCPConn, reason string) {
	s.replyStatus(conn, "400 Bad Request", reason)
}

// replyStatus is reply400 with another status line ("429 Too Many
// Requests").
func (s *Server) replyStatus(conn *net.TCPConn, status, reason string) {
	body := reason + "\n"
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := fmt.Fprintf(conn, "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", status, len(body), body)
	if err != nil || conn.CloseWrite() != nil {
		return
	}
	conn.SetReadDeadline(time.Now().Add(lingerAfter400))
	io.Copy(io.Discard, io.LimitReader(conn, 1<<20))
}

// lingerAfter400 bounds the lingering close after a 400.
const lingerAfter400 = 500 * time.Millisecond

// ClientIP finds the client address in an HTTP request header block (request
// line and header lines, CRLF separated). The header named name holds a
// chain of addresses, the nearest hop last; peer is the socket's peer, the
// nearest of all. Walking from the nearest hop, addresses in trusted are
// proxies and are skipped; the first one that is not is the client, and
// entries left of it are never looked at (a client may write anything
// there). If every address is trusted, the farthest is the client. If the
// peer itself is not trusted, the header is ignored and the peer returned:
// anybody could have written it. X-Forwarded-For, X-Real-IP and Forwarded
// (for=) are understood; several lines of the header form one chain.
// IPv4-mapped addresses are returned as IPv4, without any zone.
func ClientIP(block []byte, name string, peer netip.Addr, trusted func(netip.Addr) bool) (netip.Addr, error) {
	if !trusted(peer) {
		return peer, nil
	}
	elems, found := headerElems(block, name)
	if !found {
		return netip.Addr{}, fmt.Errorf("%w: no %s header", errNoClientIP, name)
	}
	forwarded := strings.EqualFold(name, "Forwarded")
	var farthest netip.Addr
	for i := len(elems) - 1; i >= 0; i-- {
		elem := strings.TrimSpace(elems[i])
		if forwarded {
			elem = forwardedFor(elem)
		}
		if elem == "" {
			continue
		}
		ip, err := parseHostAddr(elem)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%w: %s header: %w", errNoClientIP, name, err)
		}
		if ip = ip.Unmap().WithZone(""); !trusted(ip) {
			return ip, nil
		}
		farthest = ip
	}
	if farthest.IsValid() {
		return farthest, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: empty %s header", errNoClientIP, name)
}

// headerElems returns the comma-separated elements of every line of header
// name, in order (RFC 9110: several lines are one comma-joined list).
func headerElems(block []byte, name string) ([]string, bool) {
	lines := strings.Split(string(block), "\r\n")
	var elems []string
	found := false
	for _, line := range lines[1:] { // lines[0] is the request line
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			found = true
			elems = append(elems, strings.Split(v, ",")...)
		}
	}
	return elems, found
}

// forwardedFor returns the for= parameter of one RFC 7239 element.
func forwardedFor(elem string) string {
	for _, pair := range strings.Split(elem, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "for") {
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return ""
}

// parseHostAddr accepts "ip", "ip:port", "[v6]" and "[v6]:port".
func parseHostAddr(s string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return ip, nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr(), nil
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		if ip, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%q is not an IP address", clipString(s, 64))
}

func clipString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
