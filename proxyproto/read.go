// Package proxyproto is stickyd's thin adapter over
// github.com/pires/go-proxyproto (imported as pp): it reads the PROXY v1/v2
// header an upstream balancer sends and writes the header stickyd sends to a
// backend. The library does all the parsing and formatting; this package only
// decides how many bytes make up a header, so that the header may arrive in
// pieces (one byte at a time is fine) and so that bytes the client sent after
// the header are handed back to the caller instead of being lost.
//
// Security posture: ReadHeader is only called for peers inside the trusted
// CIDR list; a header is then required. For everyone else the caller uses
// LooksLikeHeader to refuse a header it did not ask for.
//
//	hdr, rest, err := proxyproto.ReadHeader(conn, 5*time.Second)
//	// hdr.Source is the real client (or invalid for LOCAL); rest goes to the backend first.
package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// Sentinel errors. Errors from the library (pp.ErrInvalidAddress and friends)
// are wrapped as well, so errors.Is works for both.
var (
	// ErrNoHeader: a trusted peer sent bytes that are not a PROXY header.
	ErrNoHeader = errors.New("proxyproto: no PROXY header from trusted upstream")
	// ErrV1TooLong: no CRLF within the 107 bytes a v1 header may take.
	ErrV1TooLong = errors.New("proxyproto: v1 header longer than 107 bytes")
	// ErrTruncated: the peer closed the connection inside the header.
	ErrTruncated = errors.New("proxyproto: header truncated")
	// ErrTimeout: the header did not complete within the timeout.
	ErrTimeout = errors.New("proxyproto: header timeout")
	// ErrEmpty: the peer closed (or reset) the connection before sending a
	// byte (a port probe, a TCP health check).
	ErrEmpty = errors.New("proxyproto: connection closed before any byte")
	// ErrUnexpected: an untrusted peer sent a PROXY header.
	ErrUnexpected = errors.New("proxyproto: PROXY header from untrusted peer")
)

const (
	v1MaxLen   = 107
	v2FixedLen = 16
)

// Header is what an upstream's PROXY header says.
type Header struct {
	// Version is 1 or 2.
	Version byte
	// Local is true for v2 LOCAL and v1 UNKNOWN (health checks): the
	// addresses carry no meaning and the caller uses the socket's.
	Local bool
	// Source and Destination are the client and the address it connected to
	// (IPv4-mapped addresses normalised to IPv4). Zero when Local, or when the
	// header carries a non-IP family (unix, unspecified).
	Source, Destination netip.AddrPort
	// TLVs are the v2 type-length-values, in order.
	TLVs []pp.TLV
	// Raw is the header as received.
	Raw []byte
}

// ReadHeader reads one PROXY v1 or v2 header from conn within timeout and
// clears the read deadline afterwards. It returns the parsed header and the
// bytes read past its end, which belong to the client's stream and must be
// forwarded. The caller keeps ownership of conn (and closes it on error).
func ReadHeader(conn net.Conn, timeout time.Duration) (*Header, []byte, error) {
	return ReadHeaderAfter(conn, nil, timeout)
}

// ReadHeaderAfter is ReadHeader for a header whose first bytes, have, were
// read from conn already (Split found them incomplete).
func ReadHeaderAfter(conn net.Conn, have []byte, timeout time.Duration) (*Header, []byte, error) {
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, nil, err
	}
	raw, rest, err := readRaw(conn, have)
	if err != nil {
		return nil, nil, err
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return nil, nil, err
	}
	h, err := Parse(raw)
	if err != nil {
		return nil, nil, err
	}
	return h, rest, nil
}

// Parse parses exactly one complete header.
func Parse(raw []byte) (*Header, error) {
	ph, err := pp.Read(bufio.NewReaderSize(bytes.NewReader(raw), len(raw)+16))
	if err != nil {
		if errors.Is(err, pp.ErrNoProxyProtocol) {
			return nil, fmt.Errorf("%w: %w", ErrNoHeader, err)
		}
		return nil, fmt.Errorf("parse %s: %w", describe(raw), err)
	}
	h := &Header{Version: ph.Version, Local: ph.Command.IsLocal(), Raw: raw}
	if ph.Version == 2 {
		if h.TLVs, err = ph.TLVs(); err != nil {
			if !h.Local {
				return nil, fmt.Errorf("parse %s: %w", describe(raw), err)
			}
			// LOCAL: the receiver discards the whole block (spec 2.2), so a
			// health check with a malformed TLV vector is still served.
			h.TLVs = nil
		}
	}
	if h.Local {
		return h, nil
	}
	if err := verifyChecksum(raw); err != nil {
		return nil, fmt.Errorf("parse %s: %w", describe(raw), err)
	}
	if src, dst, ok := ph.TCPAddrs(); ok {
		h.Source = normalize(src.AddrPort())
		h.Destination = normalize(dst.AddrPort())
	}
	return h, nil
}

// Split returns the complete header at the start of buf and the bytes
// after it (the client's stream); nil, nil, nil while buf holds only the
// start of one; an error when buf cannot start one (ErrNoHeader), or
// announces one too long. It never waits: for a server that reads what
// has arrived, and hands the rest to ReadHeaderAfter.
func Split(buf []byte) (raw, rest []byte, err error) {
	need, err := headerLen(buf)
	if err != nil || need == 0 || len(buf) < need {
		return nil, nil, err
	}
	return buf[:need], buf[need:], nil
}

// readRaw reads from conn, after the bytes have read already, until it
// holds one whole header, deciding its length from the signature: v1 ends
// at CRLF, v2 carries its length.
func readRaw(conn net.Conn, have []byte) (raw, rest []byte, err error) {
	buf := append(make([]byte, 0, max(256, len(have))), have...)
	for {
		need, err := headerLen(buf)
		if err != nil {
			return nil, nil, err
		}
		if need > 0 && len(buf) >= need {
			return buf[:need], buf[need:], nil
		}
		if need > cap(buf) {
			grown := make([]byte, len(buf), need)
			copy(grown, buf)
			buf = grown
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil && n == 0 {
			return nil, nil, readError(err, len(buf))
		}
	}
}

// headerLen returns the total header length once buf holds enough to know
// it, 0 while more bytes are needed, or an error when buf cannot be a header.
func headerLen(buf []byte) (int, error) {
	if !couldBeHeader(buf) {
		return 0, fmt.Errorf("%w: starts with %q", ErrNoHeader, clip(buf, 16))
	}
	if bytes.HasPrefix(buf, pp.SIGV1) {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && i < v1MaxLen {
			return i + 1, nil
		}
		if len(buf) >= v1MaxLen {
			return 0, ErrV1TooLong
		}
		return 0, nil
	}
	if len(buf) < v2FixedLen {
		return 0, nil
	}
	// Refuse at once a length the library would refuse once read: a lying
	// length must not hold the connection (and 64 KiB) until the timeout.
	if n := int(binary.BigEndian.Uint16(buf[14:16])); n > int(pp.MaxV2HeaderSize) {
		return 0, fmt.Errorf("%w: v2 length %d over %d", pp.ErrInvalidLength, n, pp.MaxV2HeaderSize)
	}
	return v2FixedLen + int(binary.BigEndian.Uint16(buf[14:16])), nil
}

// couldBeHeader reports whether buf is, so far, a prefix of a PROXY header.
func couldBeHeader(buf []byte) bool {
	for _, sig := range [][]byte{pp.SIGV1, pp.SIGV2} {
		n := min(len(buf), len(sig))
		if bytes.Equal(buf[:n], sig[:n]) {
			return true
		}
	}
	return false
}

// LooksLikeHeader reports whether the first bytes an untrusted client sent
// start a PROXY header (or could, if more bytes came): such a peer is lying
// about being a proxy. It returns false as soon as buf rules that out.
func LooksLikeHeader(buf []byte) (maybe, certain bool) {
	if len(buf) == 0 || !couldBeHeader(buf) {
		return false, false
	}
	return true, bytes.HasPrefix(buf, pp.SIGV1) || (len(buf) >= len(pp.SIGV2) && bytes.HasPrefix(buf, pp.SIGV2))
}

// describe names a header that failed to parse, for the log line: a v1
// line quoted, or a v2 header's command, family and length bytes.
func describe(raw []byte) string {
	if len(raw) >= v2FixedLen && bytes.HasPrefix(raw, pp.SIGV2) {
		return fmt.Sprintf("v2 header (command 0x%02x, family 0x%02x, length %d)",
			raw[12], raw[13], binary.BigEndian.Uint16(raw[14:16]))
	}
	return fmt.Sprintf("v1 header %q", clip(raw, v1MaxLen))
}

func readError(err error, got int) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w after %d bytes", ErrTimeout, got)
	}
	if got == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		return ErrEmpty // HAProxy and NLB health checks close with a reset
	}
	return fmt.Errorf("%w after %d bytes: %w", ErrTruncated, got, err)
}

func normalize(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func clip(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
