package server

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzHeaderBlockChecks: the RFC 9112 checks never panic, only ever return
// errHTTPMalformed, and what they accept has CRLF line ends only, no field
// line starting with whitespace, and a token before every line's colon:
// the only block shape on which stickyd and a strict backend agree.
func FuzzHeaderBlockChecks(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nX-Foo: bar\r\n X-Forwarded-For: 6.6.6.6\r\n"))
	f.Add([]byte("GET / HTTP/1.1\nX-Forwarded-For : 6.6.6.6\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nX-Foo: a\rX-Forwarded-For: 6.6.6.6\r\n"))
	f.Fuzz(func(t *testing.T, block []byte) {
		err := lineEndError(block, 0)
		if err == nil {
			err = fieldLinesError(block)
		}
		if err != nil {
			if !errors.Is(err, errHTTPMalformed) || strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error %q: want one line wrapping errHTTPMalformed", err)
			}
			return
		}
		if bytes.Contains(bytes.ReplaceAll(block, []byte("\r\n"), nil), []byte("\n")) {
			t.Fatalf("accepted a bare LF: %q", block)
		}
		if i := bytes.IndexByte(bytes.ReplaceAll(block, []byte("\r\n"), nil), '\r'); i >= 0 && i != len(bytes.ReplaceAll(block, []byte("\r\n"), nil))-1 {
			t.Fatalf("accepted a bare CR: %q", block)
		}
		lines := strings.Split(strings.TrimLeft(string(block), "\r\n"), "\r\n")
		for _, line := range lines[1:] {
			if line == "" {
				continue
			}
			name, _, ok := strings.Cut(line, ":")
			if !ok || !isToken(name) || strings.ContainsAny(line[:1], " \t") {
				t.Fatalf("accepted field line %q", line)
			}
		}
	})
}
