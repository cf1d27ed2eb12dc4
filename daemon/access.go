package daemon

import (
	"sync"
	"time"

	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/logging"
	"go.uber.org/zap"
)

// accessLog is the access log in force (access_log): opened at start,
// reopened by each reload (after logrotate has moved the file), closed
// after the drain, once every connection has had its line.
type accessLog struct {
	mu      sync.Mutex
	cur     *logging.Access // nil: off; guarded by mu
	closing *logging.Access // the one cur replaced, while it writes out its last lines; guarded by mu
	dropped int64           // lines dropped by access logs closed before cur; guarded by mu
	closed  bool            // stopAccess has run: nothing more is opened; guarded by mu
	// last are the destination and the write error of the access log
	// closed last, for the report of its dropped lines; guarded by mu.
	lastDest string
	lastErr  error
	stop     chan struct{} // ends report
	done     chan struct{}
}

// accessDest is cfg's access log destination; "" when off.
func accessDest(cfg *config.Config) string {
	if cfg.AccessLog == logging.AccessOff {
		return ""
	}
	return cfg.AccessLog
}

// openAccess opens cfg's access log for the server, or returns nil when it
// is off or is the one in force (stderr and stdout are never reopened).
// keep reports that the one in force stays.
func (d *daemon) openAccess(cfg *config.Config) (next *logging.Access, keep bool, err error) {
	dest := accessDest(cfg)
	d.access.mu.Lock()
	cur := d.access.cur
	d.access.mu.Unlock()
	switch {
	case dest == "":
		return nil, false, nil
	case cur != nil && cur.Dest == dest && (dest == logging.AccessStderr || dest == logging.AccessStdout):
		return nil, true, nil
	}
	next, err = logging.OpenAccess(dest, logFormat(cfg), d.logs) // as the main log's, for stderr
	return next, false, err
}

// useAccess makes next the access log in force and closes the one it
// replaces, once its queued lines are written (at most a second). After
// stopAccess it only closes next (a reload that raced the shutdown).
func (d *daemon) useAccess(next *logging.Access) {
	d.access.mu.Lock()
	if d.access.closed {
		d.access.mu.Unlock()
		next.Close(0)
		return
	}
	if next == nil {
		d.srv.SetAccessLog(nil)
	} else {
		d.srv.SetAccessLog(next.Log)
	}
	old := d.access.cur
	d.access.cur, d.access.closing = next, old // its drops stay counted meanwhile
	d.access.mu.Unlock()
	if old != nil {
		old.Close(time.Second)
		d.access.mu.Lock()
		d.access.dropped += old.Dropped()
		d.access.closing = nil
		d.access.lastDest, d.access.lastErr = old.Dest, old.LastError()
		d.access.mu.Unlock()
	}
}

// accessCounts returns the lines given to the access log and those
// dropped because its output did not keep up, since the start.
func (d *daemon) accessCounts() (lines, dropped int64) {
	d.access.mu.Lock()
	defer d.access.mu.Unlock()
	return d.srv.Metrics().AccessLines.Load(), d.access.dropped + d.access.cur.Dropped() + d.access.closing.Dropped()
}

// reportAccess logs, every 10 s, the access log lines dropped since the
// last look, if any, until stopAccess.
func (d *daemon) reportAccess() {
	d.access.stop, d.access.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(d.access.done)
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		var seen int64
		look := func() {
			_, dropped := d.accessCounts()
			if dropped <= seen {
				return
			}
			dest, werr := d.accessState()
			if werr != nil {
				d.log.Warn("access log lines dropped: writing them failed",
					zap.Int64("dropped", dropped-seen), zap.String("access_log", dest), zap.NamedError("write_error", werr),
					zap.String("fix", "free space on the access log's disk (logrotate), or check the file; SIGHUP reopens it"))
			} else {
				d.log.Warn("access log lines dropped: its output did not keep up",
					zap.Int64("dropped", dropped-seen), zap.String("access_log", dest),
					zap.String("fix", "put the access log on a faster disk, or write it to stdout and let the container runtime ship it"))
			}
			seen = dropped
		}
		for {
			select {
			case <-t.C:
				look()
			case <-d.access.stop:
				look()
				return
			}
		}
	}()
}

// accessState names the access log in force, or the one closed last when
// none is (after stopAccess), and its write error, for the report.
func (d *daemon) accessState() (dest string, err error) {
	d.access.mu.Lock()
	defer d.access.mu.Unlock()
	if d.access.cur == nil {
		return d.access.lastDest, d.access.lastErr
	}
	return d.access.cur.Dest, d.access.cur.LastError()
}

// stopAccess closes the access log (after the drain: every connection has
// had its line) and its report.
func (d *daemon) stopAccess() {
	d.useAccess(nil)
	d.access.mu.Lock()
	d.access.closed = true
	d.access.mu.Unlock()
	if d.access.stop != nil {
		close(d.access.stop)
		<-d.access.done
	}
}
