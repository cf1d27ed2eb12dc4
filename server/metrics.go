package server

import (
	"errors"
	"sync/atomic"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/proxyproto"
)

// Header error kinds counted by Metrics.HeaderErrors.
const (
	HeaderTimeout    = "timeout"
	HeaderTruncated  = "truncated"
	HeaderMissing    = "missing"    // a trusted peer sent no PROXY header
	HeaderUntrusted  = "untrusted"  // an untrusted peer sent one
	HeaderTooLong    = "too_long"   // v1 over 107 bytes, or an HTTP block over the limit
	HeaderMalformed  = "malformed"  // anything the parser refused
	HeaderHTTPNoAddr = "http_no_ip" // client_ip_header missing or unusable
	// HeaderHTTPMalformed: an HTTP header block RFC 9112 rejects (obs-fold,
	// whitespace before a colon, bare CR or LF).
	HeaderHTTPMalformed = "http_malformed"
)

var headerKinds = []string{HeaderTimeout, HeaderTruncated, HeaderMissing, HeaderUntrusted,
	HeaderTooLong, HeaderMalformed, HeaderHTTPNoAddr, HeaderHTTPMalformed}

// Metrics are the server's counters, read by the admin endpoint.
type Metrics struct {
	Accepted  atomic.Int64 // connections relayed to a backend
	NoBackend atomic.Int64 // connections refused because no backend answered
	// ClientLimit counts connections refused because their client had
	// max_connections_per_client open.
	ClientLimit atomic.Int64
	// ClientRate counts connections refused because their client opened
	// max_connection_rate_per_client in the last second.
	ClientRate atomic.Int64
	BytesIn    atomic.Int64 // client -> backend, finished connections
	BytesOut   atomic.Int64 // backend -> client, finished connections
	// LimitWaits counts the times accepting paused because MaxConnections
	// were open (new clients then wait in the kernel backlog).
	LimitWaits atomic.Int64
	// LoopHandshakes counts handshakes done on the loop that accepted the
	// client (loop.go); GoroutineHandshakes those run by a handshake
	// goroutine: the goroutine accept loop's, and what a loop handed over
	// (a trusted upstream, a backend off loopback, a partial header).
	LoopHandshakes, GoroutineHandshakes atomic.Int64
	// AccessLines counts the lines given to the access log (access.go).
	AccessLines atomic.Int64
	headerErr   map[string]*atomic.Int64
}

// NewMetrics returns zeroed counters.
func NewMetrics() *Metrics {
	m := &Metrics{headerErr: make(map[string]*atomic.Int64, len(headerKinds))}
	for _, k := range headerKinds {
		m.headerErr[k] = new(atomic.Int64)
	}
	return m
}

// HeaderErrors returns the count of header errors per kind.
func (m *Metrics) HeaderErrors() map[string]int64 {
	out := make(map[string]int64, len(m.headerErr))
	for k, v := range m.headerErr {
		out[k] = v.Load()
	}
	return out
}

func (m *Metrics) headerError(err error) {
	m.headerErr[headerKind(err)].Add(1)
}

func headerKind(err error) string {
	switch {
	case errors.Is(err, proxyproto.ErrTimeout), errors.Is(err, errHTTPTimeout):
		return HeaderTimeout
	case errors.Is(err, proxyproto.ErrTruncated):
		return HeaderTruncated
	case errors.Is(err, proxyproto.ErrNoHeader):
		return HeaderMissing
	case errors.Is(err, proxyproto.ErrUnexpected):
		return HeaderUntrusted
	case errors.Is(err, proxyproto.ErrV1TooLong), errors.Is(err, pp.ErrVersion1HeaderTooLong), errors.Is(err, errHTTPTooLarge):
		return HeaderTooLong
	case errors.Is(err, errNoClientIP):
		return HeaderHTTPNoAddr
	case errors.Is(err, errHTTPMalformed):
		return HeaderHTTPMalformed
	}
	return HeaderMalformed
}
