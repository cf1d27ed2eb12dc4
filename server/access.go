package server

import (
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// Statuses of an access log line besides a refusal's cause
// (refusalCause): the connection was relayed, or it closed before saying
// anything (a port probe, a load balancer's TCP health check).
const (
	AccessRelayed = "relayed"
	AccessEmpty   = "empty"
)

// SetAccessLog sets the access log from now on; nil turns it off. It
// gets one line per client connection, written when the connection ends,
// whether it was relayed or refused.
func (s *Server) SetAccessLog(l *zap.Logger) { s.access.Store(l) }

// accessLine is one connection's line in the access log.
type accessLine struct {
	status       string         // AccessRelayed, AccessEmpty or a refusal's cause
	peer, client netip.AddrPort // the socket's peer; the client it announced (or the peer)
	via          string         // how the client address was learned (client.via)
	backend      string         // the backend's name; "" when refused
	in, out      int64          // bytes client -> backend, backend -> client
	took         time.Duration
	end          error // how it ended, when not cleanly; a refusal's error
}

// logAccess writes line to the access log, if one is on.
func (s *Server) logAccess(line accessLine) {
	l := s.access.Load()
	if l == nil {
		return
	}
	s.metrics.AccessLines.Add(1)
	backend := zap.Skip()
	if line.backend != "" {
		backend = zap.String("backend", line.backend)
	}
	l.Info("connection", zap.String("status", line.status), zap.Stringer("client", line.client),
		zap.Stringer("peer", line.peer), zap.String("via", line.via), backend,
		zap.Int64("bytes_in", line.in), zap.Int64("bytes_out", line.out),
		zap.Duration("duration", line.took), zap.NamedError("end", line.end))
}
