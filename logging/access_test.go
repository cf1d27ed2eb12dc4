package logging

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"go.uber.org/zap"
)

// readLines reads path's JSON lines.
func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// A file access log is appended to (never truncated), created 0640, and
// written as JSON lines without level or caller, even when the main log
// is in console format; Close writes out what is queued, and lines after
// it are dropped and counted.
func TestAccessFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	if err := os.WriteFile(path, []byte(`{"msg":"earlier"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := OpenAccess(path, "console", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		a.Log.Info("connection", zap.Int("i", i), zap.String("client", "192.0.2.1:1000"))
	}
	a.Close(testkit.Guard)
	lines := readLines(t, path)
	if len(lines) != 101 || lines[0]["msg"] != "earlier" {
		t.Fatalf("%d lines, first %v: want the earlier line and 100 more", len(lines), lines[0])
	}
	for i, l := range lines[1:] {
		if l["msg"] != "connection" || l["i"] != float64(i) || l["client"] != "192.0.2.1:1000" || l["ts"] == nil {
			t.Fatalf("line %d: %v", i, l)
		}
		if _, ok := l["level"]; ok {
			t.Fatalf("line %d has a level: %v", i, l)
		}
		if _, ok := l["caller"]; ok {
			t.Fatalf("line %d has a caller: %v", i, l)
		}
	}
	a.Log.Info("connection", zap.Int("i", 100))
	if a.Dropped() != 1 {
		t.Errorf("Dropped = %d after a line logged past Close, want 1", a.Dropped())
	}
	if n := len(readLines(t, path)); n != 101 {
		t.Errorf("%d lines after Close, want 101", n)
	}

	// A new file is created 0640.
	fresh := filepath.Join(t.TempDir(), "new.log")
	b, err := OpenAccess(fresh, "json", nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Close(testkit.Guard)
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("created %v, %v; want mode 0640", fi.Mode(), err)
	}
}

// A path that cannot be an access log is refused with what is wrong and
// the fix: a missing directory, a directory, a named pipe (opening it
// would wait for a reader).
func TestAccessFileRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing", "access.log"), "the directory " + filepath.Join(dir, "missing") + " is not there"},
		{dir, "is not a regular file"},
		{fifo, "is not a regular file"},
	} {
		done := make(chan error, 1)
		go func() { _, err := OpenAccess(tc.path, "json", nil); done <- err }()
		err := testkit.Await(t, done, "OpenAccess(%s) did not return", tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "access_log: ") {
			t.Errorf("OpenAccess(%s): %v, want %q", tc.path, err, tc.want)
		}
	}
}

// stderr shares the main log's buffer and format: its lines are info
// lines of the main stream, with the level, written whatever the main
// log's level (warn here) and never rate-limited.
func TestAccessStderr(t *testing.T) {
	var out lockedBuffer
	log, logs := New(Options{Level: zap.WarnLevel, Burst: 1}, &out)
	a, err := OpenAccess(AccessStderr, "json", logs)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden at warn")
	for range 50 {
		a.Log.Info("connection", zap.String("status", "relayed"))
	}
	a.Close(testkit.Guard) // not the main log's buffer: a no-op
	logs.Close(testkit.Guard)
	lines := out.lines(t)
	if n := count(lines, "connection", ""); n != 50 || len(lines) != 50 {
		t.Fatalf("%d access lines of %d, want 50 of 50: %v", n, len(lines), lines)
	}
	if lines[0]["level"] != "info" || lines[0]["status"] != "relayed" {
		t.Errorf("line %v", lines[0])
	}
	log.Warn("the main log still writes")
	logs.Close(testkit.Guard)
	if count(out.lines(t), "the main log still writes", "") != 1 {
		t.Error("closing the stderr access log closed the main log's writer")
	}
}

// Close stops the writer's goroutine: reopening the access log on every
// reload leaks nothing.
func TestWriterCloseStopsGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 50 {
		w := NewWriter(&lockedBuffer{}, 1<<10)
		w.Write([]byte("line\n"))
		w.Close(testkit.Guard)
	}
	testkit.WaitFor(t, "the writers' goroutines gone", func() bool { return runtime.NumGoroutine() <= before+2 },
		testkit.Every(10*time.Millisecond))
}

// countingWriter counts the writes it gets.
type countingWriter struct {
	lockedBuffer
	writes atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.lockedBuffer.Write(p)
}

// With a delay, lines go out in batches: one write for many lines, each
// line out within the delay, and Flush does not wait for it.
func TestWriterDelayBatches(t *testing.T) {
	out := &countingWriter{}
	w := NewWriter(out, 1<<20)
	defer w.Close(testkit.Guard)
	w.SetDelay(time.Hour) // only size or Flush sends them
	for range 100 {
		w.Write([]byte(`{"msg":"connection"}` + "\n"))
	}
	if n := out.writes.Load(); n != 0 {
		t.Fatalf("%d writes before the delay or the size was reached", n)
	}
	if !w.Flush(testkit.Guard) || out.writes.Load() != 1 || len(out.lines(t)) != 100 {
		t.Fatalf("Flush: %d writes, %d lines; want 1 and 100", out.writes.Load(), len(out.lines(t)))
	}
	// A sixteenth of the limit goes at once.
	big := make([]byte, (1<<20)/16)
	big[len(big)-1] = '\n'
	w.Write(big)
	testkit.WaitFor(t, "a batch of a sixteenth of the limit written", func() bool { return out.writes.Load() == 2 })
	// A short delay: the line goes out after it, unprompted.
	w.SetDelay(20 * time.Millisecond)
	w.Write([]byte(`{"msg":"late"}` + "\n"))
	testkit.WaitFor(t, "the line written after the delay", func() bool { return strings.Contains(out.String(), "late") })
}

// A file whose writes fail (a full disk: /dev/full) loses lines, never
// silently: they count as dropped, and LastError says why.
func TestAccessWriteErrorsCounted(t *testing.T) {
	a, err := OpenAccess("/dev/full", "json", nil)
	if err != nil {
		t.Skipf("/dev/full: %v", err)
	}
	defer a.Close(testkit.Guard)
	for range 10 {
		a.Log.Info("connection")
	}
	a.w.Flush(testkit.Guard)
	if a.Dropped() != 10 || !errors.Is(a.LastError(), syscall.ENOSPC) {
		t.Errorf("Dropped %d, LastError %v; want 10 and ENOSPC", a.Dropped(), a.LastError())
	}
}

// CheckAccess (check-config) finds what OpenAccess would refuse, and
// creates nothing.
func TestCheckAccess(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing.log")
	if err := os.WriteFile(existing, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "fresh.log")
	for _, tc := range []struct{ dest, want string }{
		{"off", ""}, {"stderr", ""}, {"stdout", ""}, {"/dev/null", ""},
		{existing, ""}, {fresh, ""},
		{filepath.Join(dir, "missing", "a.log"), "is not there"},
		{dir, "is not a regular file"},
		{fifo, "is not a regular file"},
	} {
		err := CheckAccess(tc.dest)
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckAccess(%s) = %v, want %q", tc.dest, err, tc.want)
		}
	}
	if _, err := os.Stat(fresh); err == nil {
		t.Error("CheckAccess created the file")
	}
}
