package logging

import (
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
	dropped atomic.Int64

	mu      sync.Mutex
	buf     []byte        // lines not handed to the output yet; guarded by mu
	writing bool          // the goroutine is writing a batch; guarded by mu
	idle    chan struct{} // closed once buf is empty and nothing is being written; guarded by mu
}

// NewWriter starts the writer goroutine for out, buffering at most limit
// bytes. The goroutine lives as long as the process (it may be blocked on
// the output forever).
func NewWriter(out io.Writer, limit int) *Writer {
	w := &Writer{out: out, limit: limit, wake: make(chan struct{}, 1)}
	go w.run()
	return w
}

// Write queues a copy of p (one log line) or drops it when the buffer is
// full. It never blocks on the output and never fails.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if len(w.buf)+len(p) > w.limit {
		w.mu.Unlock()
		w.dropped.Add(1)
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
	return len(p), nil
}

// Dropped returns the number of lines dropped because the buffer was full.
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
	for range w.wake {
		w.mu.Lock()
		batch, w.buf = w.buf, batch[:0]
		w.writing = true
		w.mu.Unlock()
		if len(batch) > 0 {
			w.out.Write(batch) // an error cannot be logged anywhere else
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
