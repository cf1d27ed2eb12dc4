package proxyproto

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// pipePair returns both ends of a real loopback TCP connection.
func pipePair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func v2Header(t *testing.T, src, dst string, tlvs ...pp.TLV) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, 2, netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), tlvs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// v2Local builds a v2 LOCAL header with the given family byte and block.
func v2Local(t *testing.T, family byte, block []byte) []byte {
	t.Helper()
	h := append(append([]byte{}, pp.SIGV2...), 0x20, family, byte(len(block)>>8), byte(len(block)))
	return append(h, block...)
}

func tlvBytes(t *testing.T, tlvs ...pp.TLV) []byte {
	t.Helper()
	raw, err := pp.JoinTLVs(tlvs)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestReadHeader(t *testing.T) {
	nlbTLVs := []pp.TLV{{Type: 0xEA, Value: append([]byte{0x01}, "vpce-0123456789abcdef0"...)}, {Type: pp.PP2_TYPE_NOOP, Value: make([]byte, 300)}}
	tests := []struct {
		name     string
		in       []byte
		src, dst string
		local    bool
		tlvs     int
		rest     string
	}{
		{name: "v1 tcp4", in: []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\nGET /"), src: "192.0.2.1:1234", dst: "192.0.2.2:80", rest: "GET /"},
		{name: "v1 tcp6", in: []byte("PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n"), src: "[2001:db8::1]:1234", dst: "[2001:db8::2]:443"},
		{name: "v1 mapped", in: []byte("PROXY TCP6 ::ffff:198.51.100.7 ::ffff:192.0.2.2 1 2\r\n"), src: "198.51.100.7:1", dst: "192.0.2.2:2"},
		{name: "v1 unknown", in: []byte("PROXY UNKNOWN\r\n"), local: true},
		{name: "v2 tcp4", in: append(v2Header(t, "203.0.113.5:999", "10.0.0.1:80"), "data"...), src: "203.0.113.5:999", dst: "10.0.0.1:80", rest: "data"},
		{name: "v2 nlb tlvs over 256 bytes", in: v2Header(t, "203.0.113.5:999", "10.0.0.1:80", nlbTLVs...), src: "203.0.113.5:999", dst: "10.0.0.1:80", tlvs: 2},
		{name: "v2 local", in: append(append([]byte{}, pp.SIGV2...), 0x20, 0, 0, 0), local: true},
		{name: "v2 local with dummy addresses", in: append(append([]byte{}, pp.SIGV2...), 0x20, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2), local: true},
		{name: "v2 local with nlb tlvs", in: v2Local(t, 0x11, append(make([]byte, 12), tlvBytes(t, nlbTLVs...)...)), local: true, tlvs: 2},
		{name: "v2 local with junk block", in: v2Local(t, 0x11, append(make([]byte, 12), "junk!"...)), local: true},
		{name: "v2 local unspec with junk", in: v2Local(t, 0x00, []byte("\xff\xff\xffjunk")), local: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, s := pipePair(t)
			go func() {
				for _, b := range tc.in { // one byte at a time
					c.Write([]byte{b})
				}
			}()
			h, rest, err := ReadHeader(s, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if h.Local != tc.local {
				t.Errorf("Local = %v", h.Local)
			}
			if !tc.local && (h.Source.String() != tc.src || h.Destination.String() != tc.dst) {
				t.Errorf("got %s -> %s, want %s -> %s", h.Source, h.Destination, tc.src, tc.dst)
			}
			if len(h.TLVs) != tc.tlvs {
				t.Errorf("%d TLVs, want %d", len(h.TLVs), tc.tlvs)
			}
			// Bytes after the header may arrive in the same read or later.
			got := string(rest)
			if len(got) < len(tc.rest) {
				more := make([]byte, len(tc.rest)-len(got))
				s.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := readFull(s, more); err != nil {
					t.Fatal(err)
				}
				got += string(more)
			}
			if got != tc.rest {
				t.Errorf("rest %q, want %q", got, tc.rest)
			}
		})
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func TestReadHeaderErrors(t *testing.T) {
	long := append([]byte("PROXY TCP4 "), bytes.Repeat([]byte("1"), 120)...)
	sig := append([]byte{}, pp.SIGV2...)
	tests := []struct {
		name  string
		in    []byte
		close bool
		want  error
	}{
		{"v1 too long", long, false, ErrV1TooLong},
		{"v1 unknown family", []byte("PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n"), false, nil},
		{"v1 bad address", []byte("PROXY TCP4 1.2.3.999 1.2.3.5 1 2\r\n"), false, pp.ErrInvalidAddress},
		{"v1 bad port", []byte("PROXY TCP4 1.2.3.4 1.2.3.5 99999 2\r\n"), false, pp.ErrInvalidPortNumber},
		{"v1 missing CRLF", []byte("PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n"), false, nil},
		{"not a header", []byte("GET / HTTP/1.1\r\n\r\n"), false, ErrNoHeader},
		{"v2 bad signature tail", append(append([]byte{}, sig[:11]...), 0x0B, 0x21, 0x11, 0, 12), false, ErrNoHeader},
		{"v2 bad version", append(append([]byte{}, sig...), 0x31, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2), false, nil},
		{"v2 bad command", append(append([]byte{}, sig...), 0x2F, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2), false, nil},
		{"v2 length too short", append(append([]byte{}, sig...), 0x21, 0x11, 0, 4, 1, 2, 3, 4), false, pp.ErrInvalidLength},
		{"v2 length lies long", append(append([]byte{}, sig...), 0x21, 0x11, 0, 200, 1, 2, 3, 4), true, ErrTruncated},
		{"v2 length 65535 refused before it is read", append(append([]byte{}, sig...), 0x21, 0x11, 0xFF, 0xFF, 1, 2, 3, 4), false, pp.ErrInvalidLength},
		{"v2 truncated address", append(append([]byte{}, sig...), 0x21, 0x21, 0, 36, 1, 2, 3, 4), true, ErrTruncated},
		{"v2 unknown family", append(append([]byte{}, sig...), 0x21, 0x71, 0, 0), false, nil},
		{"garbage", []byte{0xde, 0xad, 0xbe, 0xef}, false, ErrNoHeader},
		{"empty", nil, true, ErrEmpty},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, s := pipePair(t)
			c.Write(tc.in)
			if tc.close {
				c.(*net.TCPConn).CloseWrite()
			}
			_, _, err := ReadHeader(s, 2*time.Second)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, ErrTimeout) {
				t.Fatalf("timed out instead of failing: %v", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReadHeaderTimeout(t *testing.T) {
	c, s := pipePair(t)
	c.Write([]byte("PROXY TCP4 1.2.3.4")) // never completed
	start := time.Now()
	_, _, err := ReadHeader(s, 200*time.Millisecond)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("timeout not honoured")
	}
}

func TestLooksLikeHeader(t *testing.T) {
	tests := []struct {
		in             string
		maybe, certain bool
	}{
		{"", false, false},
		{"P", true, false},
		{"PROX", true, false},
		{"PROXY", true, true},
		{"POST /", false, false},
		{"\r\n\r\n\x00", true, false},
		{string(pp.SIGV2), true, true},
		{"GET", false, false},
	}
	for _, tc := range tests {
		maybe, certain := LooksLikeHeader([]byte(tc.in))
		if maybe != tc.maybe || certain != tc.certain {
			t.Errorf("LooksLikeHeader(%q) = %v, %v", tc.in, maybe, certain)
		}
	}
}

// FuzzParse: Parse never panics, and a header that parses formats back to
// one that parses to the same addresses.
func FuzzParse(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	var buf bytes.Buffer
	Write(&buf, 2, netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:2"), []pp.TLV{{Type: 0xEA, Value: []byte{1, 'x'}}})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, raw []byte) {
		n, err := headerLen(raw)
		if err != nil || n == 0 || n > len(raw) {
			return
		}
		h, err := Parse(raw[:n])
		if err != nil || h.Local || !h.Source.IsValid() {
			return
		}
		var out bytes.Buffer
		if err := Write(&out, h.Version, h.Source, h.Destination, h.TLVs); err != nil {
			t.Fatalf("reformat %+v: %v", h, err)
		}
		h2, err := Parse(out.Bytes())
		if err != nil {
			t.Fatalf("reparse: %v", err)
		}
		if h2.Source != h.Source || h2.Destination != h.Destination {
			t.Fatalf("round trip %v->%v became %v->%v", h.Source, h.Destination, h2.Source, h2.Destination)
		}
	})
}

// A peer that resets before sending a byte (HAProxy's and the NLB's TCP
// health checks) is a probe, like one that closes: ErrEmpty, not an error.
func TestReadHeaderResetBeforeAnyByte(t *testing.T) {
	c, s := pipePair(t)
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	if _, _, err := ReadHeader(s, 2*time.Second); !errors.Is(err, ErrEmpty) {
		t.Fatalf("err = %v, want ErrEmpty", err)
	}
}

// Split finds a whole header at the start of what has arrived, says when
// more is needed, and refuses what cannot be one; ReadHeaderAfter reads
// on from the bytes Split found incomplete.
func TestSplitThenReadHeaderAfter(t *testing.T) {
	v2 := v2Header(t, "192.0.2.7:7", "192.0.2.1:80")
	v1 := []byte("PROXY TCP4 192.0.2.7 192.0.2.1 7 80\r\n")
	for _, hdr := range [][]byte{v1, v2} {
		all := append(append([]byte{}, hdr...), "data"...)
		raw, rest, err := Split(all)
		if err != nil || !bytes.Equal(raw, hdr) || string(rest) != "data" {
			t.Errorf("Split(whole): %q %q %v", raw, rest, err)
		}
		for _, n := range []int{0, 1, 5, len(hdr) - 1} {
			if raw, rest, err := Split(hdr[:n]); raw != nil || rest != nil || err != nil {
				t.Errorf("Split(%d of %d bytes) = %q %q %v, want more needed", n, len(hdr), raw, rest, err)
			}
		}
		client, server := pipePair(t)
		client.Write(all[5:])
		h, rest, err := ReadHeaderAfter(server, hdr[:5], time.Second)
		if err != nil || h.Source.String() != "192.0.2.7:7" || string(rest) != "data" {
			t.Errorf("ReadHeaderAfter: %+v %q %v", h, rest, err)
		}
	}
	if _, _, err := Split([]byte("GET / HTTP/1.1\r\n")); !errors.Is(err, ErrNoHeader) {
		t.Errorf("Split(HTTP): %v, want ErrNoHeader", err)
	}
	if _, _, err := Split(append([]byte("PROXY TCP4 "), bytes.Repeat([]byte("1"), 120)...)); !errors.Is(err, ErrV1TooLong) {
		t.Errorf("Split(long v1): %v, want ErrV1TooLong", err)
	}
}
