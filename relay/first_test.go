//go:build unix

package relay

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/proxyproto"
)

// TestEngineFirst: Stats.First says how the backend began, on every engine.
func TestEngineFirst(t *testing.T) {
	forEachEngine(t, func(t *testing.T, r *rig) {
		t.Run("data", func(t *testing.T) {
			e := r.pair(nil)
			write(t, e.client, "GET / HTTP/1.1\r\n\r\n")
			readN(t, e.backend, 18)
			write(t, e.backend, "HTTP/1.1 200 OK\r\n\r\n")
			readN(t, e.client, 19)
			if s := e.closeClean(t); s.First != FirstData {
				t.Errorf("First = %v, want data", s.First)
			}
		})
		t.Run("http 400", func(t *testing.T) {
			e := r.pair(func(p *Pair) { p.Header = []byte("PROXY UNKNOWN\r\n") })
			readN(t, e.backend, 15) // so that its close is a FIN, not a reset
			write(t, e.backend, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
			e.backend.Close()
			readN(t, e.client, 47)
			e.client.Close()
			if s := e.wait(t); s.First != FirstHTTP400 {
				t.Errorf("First = %v, want http_400", s.First)
			}
		})
		t.Run("backend closes at once", func(t *testing.T) {
			e := r.pair(nil)
			e.backend.Close()
			expectEOF(t, e.client)
			e.client.Close()
			if s := e.wait(t); s.First != FirstClosed {
				t.Errorf("First = %v (err %v), want closed", s.First, s.Err)
			}
		})
		t.Run("backend resets at once", func(t *testing.T) {
			e := r.pair(nil)
			write(t, e.client, "hello")
			readN(t, e.backend, 5)
			e.backend.SetLinger(0)
			e.backend.Close()
			e.client.SetReadDeadline(time.Now().Add(testkit.Guard))
			io.Copy(io.Discard, e.client)
			e.client.Close()
			if s := e.wait(t); s.First != FirstClosed {
				t.Errorf("First = %v (err %v), want closed", s.First, s.Err)
			}
		})
		t.Run("client closes first", func(t *testing.T) {
			e := r.pair(nil)
			write(t, e.client, "request")
			e.client.CloseWrite()
			readN(t, e.backend, 7)
			expectEOF(t, e.backend)
			e.backend.Close() // a backend that answers a FIN with its own: normal
			expectEOF(t, e.client)
			if s := e.wait(t); s.First != FirstNone {
				t.Errorf("First = %v, want none", s.First)
			}
		})
		t.Run("client resets first", func(t *testing.T) {
			e := r.pair(nil)
			e.client.SetLinger(0)
			e.client.Close()
			if s := e.wait(t); s.First != FirstNone {
				t.Errorf("First = %v, want none", s.First)
			}
		})
	})
}

// TestEngineFirstByteTimeout: a backend that never answers is closed at
// Pair.FirstByte; one that answers, or whose client keeps talking, is not.
func TestEngineFirstByteTimeout(t *testing.T) {
	const fb = 300 * time.Millisecond
	forEachEngine(t, func(t *testing.T, r *rig) {
		t.Run("silent backend", func(t *testing.T) {
			start := time.Now()
			e := r.pair(func(p *Pair) { p.FirstByte = fb })
			write(t, e.client, "request")
			s := e.wait(t)
			if !errors.Is(s.Err, ErrFirstByte) || s.First != FirstTimeout {
				t.Errorf("Stats = %+v, want ErrFirstByte and FirstTimeout", s)
			}
			if d := time.Since(start); d < fb {
				t.Errorf("closed after %v, before the first-byte timeout", d)
			}
			readN(t, e.backend, 7)
			expectEOF(t, e.backend)
			expectEOF(t, e.client)
		})
		t.Run("answer in time", func(t *testing.T) {
			e := r.pair(func(p *Pair) { p.FirstByte = fb })
			write(t, e.backend, "banner")
			readN(t, e.client, 6)
			time.Sleep(2 * fb) // past the first-byte timeout: only Idle (none) applies now
			write(t, e.client, "x")
			readN(t, e.backend, 1)
			if s := e.closeClean(t); s.First != FirstData {
				t.Errorf("First = %v", s.First)
			}
		})
		t.Run("client keeps talking", func(t *testing.T) {
			// A longer timeout here: a tick delayed past it on a loaded
			// machine would look like a silent client.
			const fb = time.Second
			e := r.pair(func(p *Pair) { p.FirstByte = fb })
			tick := time.NewTicker(fb / 4)
			defer tick.Stop()
			for range 10 { // an upload for 2.5 first-byte periods
				<-tick.C
				write(t, e.client, "u")
				readN(t, e.backend, 1)
			}
			select {
			case s := <-e.done:
				t.Fatalf("closed while the client was sending: %+v", s)
			default:
			}
			write(t, e.backend, "done")
			readN(t, e.client, 4)
			e.closeClean(t)
		})
	})
}

// TestEngineRefuseProxy: under Pair.RefuseProxy a client's PROXY header is
// refused whenever it arrives, whole or in pieces, and never reaches the
// backend; other first bytes pass.
func TestEngineRefuseProxy(t *testing.T) {
	v2 := "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x06\x06\x06\x06\x01\x02\x03\x04\x00\x50\x00\x50"
	refused := []struct {
		name   string
		pieces []string
	}{
		{"v1 after a pause", []string{"PROXY TCP4 6.6.6.6 1.2.3.4 80 80\r\nGET / HTTP/1.0\r\n\r\n"}},
		{"v2 after a pause", []string{v2 + "GET /"}},
		{"v1 in pieces", []string{"P", "RO", "XY TCP4 6.6.6.6 1.2.3.4 80 80\r\n"}},
		{"v2 in pieces", []string{"\r\n", "\r\n\x00\r\nQU", "IT\n" + v2[12:]}},
	}
	forEachEngine(t, func(t *testing.T, r *rig) {
		for _, tc := range refused {
			t.Run(tc.name, func(t *testing.T) {
				e := r.pair(func(p *Pair) { p.RefuseProxy = true; p.Header = []byte("HDR") })
				readN(t, e.backend, 3) // stickyd's own header went out at once
				for _, piece := range tc.pieces {
					time.Sleep(50 * time.Millisecond)
					write(t, e.client, piece)
				}
				if s := e.wait(t); !errors.Is(s.Err, ErrProxyHeader) {
					t.Errorf("Err = %v, want ErrProxyHeader", s.Err)
				}
				expectEOF(t, e.backend) // not a byte of it
			})
		}
		t.Run("prefix then FIN", func(t *testing.T) {
			e := r.pair(func(p *Pair) { p.RefuseProxy = true })
			write(t, e.client, "PRO")
			e.client.CloseWrite()
			if s := e.wait(t); !errors.Is(s.Err, ErrProxyHeader) {
				t.Errorf("Err = %v, want ErrProxyHeader", s.Err)
			}
			expectEOF(t, e.backend)
		})
		for _, pieces := range [][]string{{"GET / HTTP/1.1\r\n\r\n"}, {"PRO", "PFIND / HTTP/1.1\r\n\r\n"}, {"\r\n", "GET / HTTP/1.1\r\n\r\n"}} {
			t.Run("passes "+pieces[0], func(t *testing.T) {
				e := r.pair(func(p *Pair) { p.RefuseProxy = true })
				want := ""
				for _, piece := range pieces {
					time.Sleep(50 * time.Millisecond)
					write(t, e.client, piece)
					want += piece
				}
				if got := readN(t, e.backend, len(want)); string(got) != want {
					t.Fatalf("backend got %q, want %q", got, want)
				}
				if s := e.closeClean(t); s.BytesIn != int64(len(want)) {
					t.Errorf("BytesIn = %d", s.BytesIn)
				}
			})
		}
		t.Run("silent client closes", func(t *testing.T) {
			e := r.pair(func(p *Pair) { p.RefuseProxy = true })
			e.closeClean(t)
		})
	})
}

// TestProxySignature: the engine's check agrees with proxyproto's.
func TestProxySignature(t *testing.T) {
	for _, in := range []string{"", "P", "PROX", "PROXY", "PROXY TCP4", "PRX", "GET /", "\r", "\r\n\r\n\x00\r\nQUI",
		"\r\n\r\n\x00\r\nQUIT\n", "\r\n\r\nX", "\n", "PROXYX"} {
		m1, c1 := proxySignature([]byte(in))
		m2, c2 := proxyproto.LooksLikeHeader([]byte(in))
		if m1 != m2 || c1 != c2 {
			t.Errorf("%q: relay (%v, %v), proxyproto (%v, %v)", in, m1, c1, m2, c2)
		}
	}
}
