package logging

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// lockedBuffer is an output the test can read while the writer writes.
type lockedBuffer struct{ testkit.SyncBuffer }

func (b *lockedBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func count(lines []map[string]any, msg, cause string) int {
	n := 0
	for _, l := range lines {
		if l["msg"] == msg && (cause == "" || l[CauseKey] == cause) {
			n++
		}
	}
	return n
}

// TestSamplingPerCause: a flood of one cause is cut to the burst and
// counted, and never hides another cause with the same message, nor debug
// and info lines.
func TestSamplingPerCause(t *testing.T) {
	out := &lockedBuffer{}
	log, logs := New(Options{Level: zapcore.DebugLevel, Burst: 10, ReportEvery: time.Hour}, out)
	for i := 0; i < 1000; i++ {
		log.Warn("connection refused", zap.String(CauseKey, "untrusted"), zap.Int("i", i))
		log.Debug("connection closed", zap.Int("i", i))
	}
	for i := 0; i < 5; i++ {
		log.Warn("connection refused", zap.String(CauseKey, "no_backend"))
	}
	log.Info("started")
	stop := logs.Report(log)
	stop() // writes the last report
	if !logs.w.Flush(10 * time.Second) {
		t.Fatal("flush timed out")
	}
	lines := out.lines(t)
	// The writes above take well under a second; at most two seconds can be
	// touched, so at most two bursts of the flooded cause get through.
	if n := count(lines, "connection refused", "untrusted"); n < 10 || n > 20 {
		t.Errorf("untrusted: %d lines written, want one or two bursts of 10", n)
	}
	if n := count(lines, "connection refused", "no_backend"); n != 5 {
		t.Errorf("no_backend: %d lines, want all 5 (another cause must not use up its budget)", n)
	}
	if n := count(lines, "connection closed", ""); n != 1000 {
		t.Errorf("debug lines: %d, want 1000 (never sampled)", n)
	}
	if n := count(lines, "started", ""); n != 1 {
		t.Errorf("info line missing")
	}
	suppressed, dropped := logs.Counts()
	written := int64(count(lines, "connection refused", "untrusted"))
	if suppressed != 1000-written || dropped != 0 {
		t.Errorf("counts: suppressed %d dropped %d, want %d and 0", suppressed, dropped, 1000-written)
	}
	var report map[string]any
	for _, l := range lines {
		if strings.HasPrefix(l["msg"].(string), "log lines suppressed") {
			report = l
		}
	}
	if report == nil || report["suppressed"] != float64(suppressed) ||
		!strings.Contains(report["top"].([]any)[0].(string), "connection refused (untrusted): ") {
		t.Errorf("summary line: %v, want suppressed=%d naming the cause", report, suppressed)
	}
}

// blockedOutput blocks every Write until released, like a pipe nobody reads.
type blockedOutput struct {
	release chan struct{}
	lockedBuffer
}

func (b *blockedOutput) Write(p []byte) (int, error) {
	<-b.release
	return b.lockedBuffer.Write(p)
}

// TestWriterNeverBlocks: with the output blocked, Write returns at once,
// buffers at most the limit and counts the lines it drops; once the
// output drains, what was buffered arrives in order.
func TestWriterNeverBlocks(t *testing.T) {
	out := &blockedOutput{release: make(chan struct{})}
	w := NewWriter(out, 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 10000; i++ {
			w.Write([]byte("0123456789012345678\n")) // 20 bytes
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Write blocked on a blocked output")
	}
	w.mu.Lock()
	buffered := len(w.buf)
	w.mu.Unlock()
	if buffered > 1000 {
		t.Errorf("%d bytes buffered, limit 1000", buffered)
	}
	// At most one batch (<= 1000 bytes) is in the blocked Write, and at
	// most 1000 bytes buffered: at least 10000-100 lines are dropped.
	if d := w.Dropped(); d < 9900 || d > 9950 {
		t.Errorf("dropped %d lines, want 9900..9950", d)
	}
	if w.Flush(10 * time.Millisecond) {
		t.Error("Flush reported success with the output blocked")
	}
	close(out.release)
	if !w.Flush(10 * time.Second) {
		t.Fatal("Flush timed out after the output was released")
	}
	got := strings.Count(out.String(), "\n")
	if int64(got)+w.Dropped() != 10000 {
		t.Errorf("written %d + dropped %d != 10000", got, w.Dropped())
	}
}

// TestSlotWindowMovesForward: a line stamped in an earlier second (it
// waited between Check and Write) counts in the current second instead of
// opening a new window.
func TestSlotWindowMovesForward(t *testing.T) {
	var sl slot
	for i := 0; i < 3; i++ {
		if !sl.take(53, 3) {
			t.Fatalf("line %d of second 53 refused", i)
		}
	}
	if sl.take(53, 3) || sl.take(52, 3) || sl.take(53, 3) {
		t.Error("a line over the burst was let through")
	}
	if !sl.take(54, 3) {
		t.Error("a new second did not open a new window")
	}
}
