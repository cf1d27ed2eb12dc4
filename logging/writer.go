package logging

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Writer is an asynchronous, bounded zapcore.WriteSyncer: Write copies the
// line into a buffer and returns at once; one goroutine writes the buffer
// to the output. When the buffer holds limit bytes (the output is slower
// than the logging, or blocked), lines are dropped and counted, never
// waited for: logging cannot stall the proxy, and memory stays bounded
// (twice limit). Sync waits, for a bounded time, until what was written has
// reached the output.
type Writer struct {
	out     io.Writer
	limit   int
	wake    chan struct{}
	stop    chan struct{} // closed by Close
	dropped atomic.Int64
	lastErr atomic.Pointer[error] // the output's last write error

	mu      sync.Mutex
	buf     []byte        // lines not handed to the output yet; guarded by mu
	writing bool          // the goroutine is writing a batch; guarded by mu
	closed  bool          // Close has run: lines are dropped; guarded by mu
	idle    chan struct{} // closed once buf is empty and nothing is being written; guarded by mu
	delay   time.Duration // SetDelay's; guarded by mu
	armed   bool          // timer will wake the goroutine for what buf holds; guarded by mu
	timer   *time.Timer   // wakes the goroutine delay after the first line of a batch
}

// NewWriter starts the writer goroutine for out, buffering at most limit
// bytes. The goroutine lives until Close (it may be blocked on the output
// forever).
func NewWriter(out io.Writer, limit int) *Writer {
	w := &Writer{out: out, limit: limit, wake: make(chan struct{}, 1), stop: make(chan struct{})}
	go w.run()
	return w
}

// Write queues a copy of p (one log line) or drops it when the buffer is
// full. It never blocks on the output and never fails.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed || len(w.buf)+len(p) > w.limit {
		w.mu.Unlock()
		w.dropped.Add(1)
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	if w.delay > 0 && len(w.buf) < w.limit/16 {
		if !w.armed {
			w.armed = true
			w.timer.Reset(w.delay)
		}
		w.mu.Unlock()
		return len(p), nil
	}
	w.mu.Unlock()
	w.signal()
	return len(p), nil
}

// signal wakes the goroutine.
func (w *Writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// SetDelay makes the goroutine write lines in batches, up to d after the
// first line of a batch (or once the batch holds a sixteenth of the
// limit), instead of waking for each line: one write(2) and one wake-up
// for many lines, where every line counts (an access log: a line per
// connection). 0 writes each line at once (the default).
func (w *Writer) SetDelay(d time.Duration) {
	w.mu.Lock()
	if w.timer == nil {
		w.timer = time.AfterFunc(time.Hour, w.signal)
		w.timer.Stop()
	}
	w.delay = d
	pending := len(w.buf) > 0
	w.mu.Unlock()
	if pending {
		w.signal() // what waits for the old delay goes now
	}
}

// Close writes out what is queued, waiting at most timeout, and stops the
// goroutine once it is done with the output (the caller may then close
// it). Lines written after Close are dropped and counted.
func (w *Writer) Close(timeout time.Duration) {
	w.Flush(timeout)
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.stop)
		if w.timer != nil {
			w.timer.Stop()
		}
	}
	w.mu.Unlock()
}

// LastError returns the output's write error (a full disk, say), or nil
// if the last write succeeded.
func (w *Writer) LastError() error {
	if p := w.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Dropped returns the number of lines dropped because the buffer was full,
// the Writer closed, or the output failed to take them.
func (w *Writer) Dropped() int64 { return w.dropped.Load() }

// Sync waits up to a second for the buffered lines to reach the output
// (zapcore.WriteSyncer).
func (w *Writer) Sync() error {
	w.Flush(time.Second)
	return nil
}

// Flush waits up to timeout until every line queued so far has been
// written; it reports whether they were.
func (w *Writer) Flush(timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	w.signal() // lines waiting for a delayed batch go now
	for {
		w.mu.Lock()
		if len(w.buf) == 0 && !w.writing {
			w.mu.Unlock()
			return true
		}
		if w.idle == nil {
			w.idle = make(chan struct{})
		}
		idle := w.idle
		w.mu.Unlock()
		select {
		case <-idle:
		case <-deadline.C:
			return false
		}
	}
}

// run writes batches: it swaps the buffer for an empty one, so that Write
// goes on filling while the batch is written.
func (w *Writer) run() {
	var batch []byte
	for {
		select {
		case <-w.wake:
		case <-w.stop:
			return
		}
		w.mu.Lock()
		batch, w.buf = w.buf, batch[:0]
		w.writing, w.armed = true, false
		w.mu.Unlock()
		if len(batch) > 0 {
			// An error cannot be logged here (this may be the log): the
			// lines not written count as dropped, and LastError tells why.
			if n, err := w.out.Write(batch); err != nil {
				w.dropped.Add(int64(max(bytes.Count(batch[min(max(n, 0), len(batch)):], []byte{'\n'}), 1)))
				w.lastErr.Store(&err)
			} else if w.lastErr.Load() != nil {
				w.lastErr.Store(nil) // the output took lines again
			}
		}
		w.mu.Lock()
		w.writing = false
		if len(w.buf) == 0 && w.idle != nil {
			close(w.idle)
			w.idle = nil
		}
		w.mu.Unlock()
	}
}
