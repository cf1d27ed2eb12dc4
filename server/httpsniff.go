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
)

// readHTTPClient reads the first request's header block (bounded in size
// and time) and takes the client address from the configured header. Every
// byte read stays in c.pending and reaches the backend untouched.
func (s *Server) readHTTPClient(conn *net.TCPConn, c *client) error {
	conn.SetReadDeadline(time.Now().Add(s.opts.headerTimeout()))
	limit := s.opts.maxHeaderBytes()
	buf := make([]byte, 0, 2048)
	searched := 0 // buf[:searched] holds no end of the block
	for {
		if _, certain := proxyproto.LooksLikeHeader(buf); certain {
			// Header mode reads no PROXY header: relaying it would put a
			// second, client-chosen header behind ours.
			s.metrics.headerError(proxyproto.ErrUnexpected)
			return proxyproto.ErrUnexpected
		}
		if end := bytes.Index(buf[searched:], []byte("\r\n\r\n")); end >= 0 {
			conn.SetReadDeadline(time.Time{})
			c.pending = buf
			return s.routeByHeader(conn, c, buf[:searched+end+2])
		}
		searched = max(0, len(buf)-3)
		if len(buf) >= limit {
			s.metrics.headerError(errHTTPTooLarge)
			s.reply400(conn, fmt.Sprintf("request header block over %d bytes", limit))
			return fmt.Errorf("%w (%d bytes)", errHTTPTooLarge, limit)
		}
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, min(cap(buf), limit-len(buf)))...)[:len(buf)]
		}
		n, err := conn.Read(buf[len(buf):min(cap(buf), limit)])
		buf = buf[:len(buf)+n]
		if err != nil && n == 0 {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				s.metrics.headerError(errHTTPTimeout)
				return fmt.Errorf("%w after %d bytes", errHTTPTimeout, len(buf))
			}
			if len(buf) == 0 {
				return errQuiet
			}
			return fmt.Errorf("read HTTP header block: %w", err)
		}
	}
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

// reply400 answers a request stickyd will not relay, then closes its write
// side and discards what the client still sends for a moment, so that the
// close does not reset the connection before the client has read the answer
// (a lingering close, as in net/http and nginx). The caller closes conn.
func (s *Server) reply400(conn *net.TCPConn, reason string) {
	body := reason + "\n"
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := fmt.Fprintf(conn, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
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
