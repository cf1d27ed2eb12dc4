package server

import (
	"sync"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
)

// observe acts on how a relayed connection's backend began
// (relay.Stats.First): passive ejection of a backend that accepts
// connections but closes them unanswered or leaves them silent, and the
// hints for a backend that does not read the PROXY header (proxied: one
// was sent) or seems to require one that was not.
func (s *Server) observe(b *backend.Backend, st relay.Stats, proxied bool) {
	set := s.backends.Load()
	switch st.First {
	case relay.FirstData:
		set.Answered(b)
		b.NoteAnswer(true)
	case relay.FirstHTTP400:
		set.Answered(b)
		if !b.NoteAnswer(false) && proxied {
			s.hintProxy(b, st.First, true)
		}
	case relay.FirstClosed:
		set.ClosedEarly(b, false)
		if !b.NoteAnswer(false) && (proxied || s.opts.SendProxy == 0) {
			s.hintProxy(b, st.First, proxied)
		}
	case relay.FirstTimeout:
		set.ClosedEarly(b, true)
	}
}

// hintEvery is how often the PROXY hint may be logged per backend.
const hintEvery = time.Minute

// hintProxy logs, at most once per hintEvery and backend, what b's first
// answer says of its PROXY header. With a header sent, an HTTP 400 or a
// close right after it are the signs of a server that does not read the
// header (Node's HTTP parser answers 400, Python's http.server closes).
// With none sent (send_proxy none), a close without a byte is what a
// server that requires one does when a request comes first (nginx's
// proxy_protocol, HAProxy's accept-proxy, the stickyd worker package). It
// is called only when b's previous connection did not begin with a good
// answer either, so that a client's bad request to a PROXY-aware backend
// does not raise it.
func (s *Server) hintProxy(b *backend.Backend, first relay.First, sent bool) {
	if !s.hints.allow(b.Name, time.Now()) {
		return
	}
	msg := "backend closed the connection without a byte, and stickyd sends it no PROXY header: it may require one " +
		"(nginx proxy_protocol, HAProxy accept-proxy, the stickyd worker package). Fix: if it does, send one: " +
		`--send-proxy v2 (send_proxy = "v2"), or v1 if it reads only v1`
	if sent {
		what := "closed the connection right after stickyd's PROXY header, without a byte"
		if first == relay.FirstHTTP400 {
			what = "answered HTTP 400 right after stickyd's PROXY header"
		}
		msg = "backend " + what + ": it likely does not read PROXY headers. Fix: make it read them " +
			"(Node: the stickyd worker package, see MIGRATING.md; or any PROXY-aware server), " +
			`or, if it needs no client address, stop sending them: --send-proxy none (send_proxy = "none")`
	}
	s.log.Warn(msg, zap.String("backend", b.Name), zap.String("address", b.Addr()),
		zap.String("send_proxy", proxyName(s.opts.SendProxy)), zap.Stringer("answer", first))
}

func proxyName(v byte) string {
	switch v {
	case 1:
		return "v1"
	case 2:
		return "v2"
	}
	return "none"
}

// hintLimiter lets a log line through at most once per period and key.
// A small local limiter; the logger's own sampling may replace it.
type hintLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time // guarded by mu
}

func (h *hintLimiter) allow(key string, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last == nil {
		h.last = make(map[string]time.Time)
	}
	if t, ok := h.last[key]; ok && now.Sub(t) < hintEvery {
		return false
	}
	if len(h.last) >= 4096 { // backends come and go (DNS): forget old keys
		for k, t := range h.last {
			if now.Sub(t) >= hintEvery {
				delete(h.last, k)
			}
		}
	}
	h.last[key] = now
	return true
}
