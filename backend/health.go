package backend

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/stickyd/stickyd/proxyproto"
	"go.uber.org/zap"
)

// Active health-check modes for HealthConfig.Mode.
const (
	HealthNone = "none" // no active checks (the default)
	HealthTCP  = "tcp"  // the backend accepts a connection
	HealthHTTP = "http" // GET Path answers ExpectStatus
)

// ErrHealthStatus is wrapped by an HTTP check whose status is unexpected.
var ErrHealthStatus = errors.New("backend: health check: unexpected HTTP status")

// HealthConfig configures active health checks. Zero values mean the
// documented defaults, resolved in accessors.
type HealthConfig struct {
	// Mode is HealthTCP, HealthHTTP, or HealthNone / "" (off).
	Mode string
	// Interval between two checks of a backend. Default 2s.
	Interval time.Duration
	// Timeout bounds one check: connect, header, request and response.
	// Default 1s, and never more than Interval.
	Timeout time.Duration
	// Rise successes in a row put an unhealthy backend back. Default 2.
	Rise int
	// Fall failures in a row take a healthy backend out. Default 3.
	Fall int
	// Path is the HTTP check's request path. Default "/".
	Path string
	// ExpectStatus is the HTTP check's expected status; 0 accepts any
	// 2xx or 3xx.
	ExpectStatus int
	// SendProxy is the PROXY version of the LOCAL header written first on
	// every check connection (1: "PROXY UNKNOWN", 2: v2 LOCAL, 0: none),
	// so that backends that require a PROXY header accept the check.
	SendProxy byte
}

// Enabled reports whether active checks run.
func (c HealthConfig) Enabled() bool { return c.Mode == HealthTCP || c.Mode == HealthHTTP }

func (c HealthConfig) interval() time.Duration { return orDefault(c.Interval, 2*time.Second) }
func (c HealthConfig) timeout() time.Duration {
	return min(orDefault(c.Timeout, time.Second), c.interval())
}
func (c HealthConfig) rise() int { return orDefaultInt(c.Rise, 2) }
func (c HealthConfig) fall() int { return orDefaultInt(c.Fall, 3) }
func (c HealthConfig) path() string {
	if c.Path == "" {
		return "/"
	}
	return c.Path
}

func orDefaultInt(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

// maxConcurrentChecks bounds the checks of one round that run at once.
const maxConcurrentChecks = 32

// HealthChecker runs active health checks against every ready backend of
// the current Set and owns the backends' healthy flag (Backend.SetHealthy).
// A backend that is not ready (a launched worker that is starting or has
// exited) is not checked: the supervisor already keeps it out.
//
//	hc := backend.NewHealthChecker(backend.HealthConfig{Mode: backend.HealthTCP, SendProxy: 2},
//		srv.Backends, log.Named("health"))
//	go hc.Run(ctx) // until ctx ends; reloads are followed through srv.Backends
type HealthChecker struct {
	cfg     HealthConfig
	current func() *Set
	log     *zap.Logger
	streaks map[*Backend]*streak // owned by Run's goroutine
}

// streak counts one backend's consecutive results.
type streak struct{ ok, fail int }

// NewHealthChecker returns a checker for the backends of current(), which
// is called once per round so that reloads and DNS changes are followed.
func NewHealthChecker(cfg HealthConfig, current func() *Set, log *zap.Logger) *HealthChecker {
	return &HealthChecker{cfg: cfg, current: current, log: log, streaks: make(map[*Backend]*streak)}
}

// Run checks every backend each Interval until ctx ends. With checks
// disabled it marks every backend of the current set healthy (undoing an
// earlier checker's verdicts after a reload) and returns at once.
func (h *HealthChecker) Run(ctx context.Context) {
	if !h.cfg.Enabled() {
		for _, b := range h.current().Backends() {
			b.SetHealthy(true)
		}
		return
	}
	tick := time.NewTicker(h.cfg.interval())
	defer tick.Stop()
	for {
		h.Round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Round checks every ready backend of the current set once, concurrently,
// and applies the results.
func (h *HealthChecker) Round(ctx context.Context) {
	backends := h.current().Backends()
	errs := make([]error, len(backends))
	sem := make(chan struct{}, maxConcurrentChecks)
	var wg sync.WaitGroup
	for i, b := range backends {
		if !b.Ready() {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = h.Check(ctx, b)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // a check cut short by shutdown says nothing about the backend
	}
	live := make(map[*Backend]bool, len(backends))
	for i, b := range backends {
		live[b] = true
		if b.Ready() {
			h.record(b, errs[i])
		}
	}
	for b := range h.streaks {
		if !live[b] {
			delete(h.streaks, b)
		}
	}
}

// record applies one result to b's streak and flips its healthy flag after
// Rise successes or Fall failures in a row.
func (h *HealthChecker) record(b *Backend, err error) {
	s := h.streaks[b]
	if s == nil {
		s = &streak{}
		h.streaks[b] = s
	}
	if err == nil {
		s.ok, s.fail = s.ok+1, 0
	} else {
		s.ok, s.fail = 0, s.fail+1
	}
	switch {
	case b.Healthy() && s.fail >= h.cfg.fall():
		b.SetHealthy(false)
		h.log.Warn("backend failed health checks; out of rotation", zap.String("backend", b.Name),
			zap.String("address", b.Addr()), zap.Int("failures_in_a_row", s.fail), zap.Error(err))
	case !b.Healthy() && s.ok >= h.cfg.rise():
		b.SetHealthy(true)
		h.log.Info("backend passed health checks; back in rotation", zap.String("backend", b.Name),
			zap.String("address", b.Addr()), zap.Int("successes_in_a_row", s.ok))
	case err != nil:
		h.log.Debug("health check failed", zap.String("backend", b.Name), zap.Error(err))
	}
}

// Check runs one check against b and returns nil if it passed. It connects
// within Timeout, writes the PROXY LOCAL header if configured, and for HTTP
// sends GET Path and reads the status line. It does not change b's state.
func (h *HealthChecker) Check(ctx context.Context, b *Backend) error {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.timeout())
	defer cancel()
	var d net.Dialer
	dst := b.dest.Load()
	conn, err := d.DialContext(ctx, dst.network, dst.addr)
	if err != nil {
		return fmt.Errorf("health check %s: %w", b.Name, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if err := proxyproto.WriteLocal(conn, h.cfg.SendProxy); err != nil {
		return fmt.Errorf("health check %s: write PROXY header: %w", b.Name, err)
	}
	if h.cfg.Mode != HealthHTTP {
		return nil
	}
	if err := h.checkHTTP(conn, b, dst); err != nil {
		return fmt.Errorf("health check %s: %w", b.Name, err)
	}
	return nil
}

// checkHTTP sends the request on conn and checks the response status.
func (h *HealthChecker) checkHTTP(conn net.Conn, b *Backend, dst *dest) error {
	host := dst.addr
	if dst.network == "unix" {
		host = "localhost"
	}
	req := "GET " + h.cfg.path() + " HTTP/1.1\r\nHost: " + host +
		"\r\nUser-Agent: stickyd-health-check\r\nConnection: close\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	resp.Body.Close()
	want := h.cfg.ExpectStatus
	if want == 0 && resp.StatusCode >= 200 && resp.StatusCode < 400 || resp.StatusCode == want {
		return nil
	}
	if want == 0 {
		return fmt.Errorf("%w: GET %s answered %d, want 2xx or 3xx", ErrHealthStatus, h.cfg.path(), resp.StatusCode)
	}
	return fmt.Errorf("%w: GET %s answered %d, want %d", ErrHealthStatus, h.cfg.path(), resp.StatusCode, want)
}
