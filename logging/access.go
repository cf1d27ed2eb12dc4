package logging

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// Access log destinations besides a file's path.
const (
	AccessOff    = "off"
	AccessStderr = "stderr" // the main log's output and buffer
	AccessStdout = "stdout"
)

// Access is the access log: one line per client connection, written when
// the connection ends, at info level and never rate-limited (the point of
// an access log is that every connection is in it). Like the main log it
// never waits for its output: a line that does not fit the buffer is
// dropped and counted.
type Access struct {
	// Log writes the lines.
	Log *zap.Logger
	// Dest is what OpenAccess was given: stderr, stdout or a file's path.
	Dest string

	w      *Writer  // the access log's own buffer; nil for stderr
	shared *Writer  // the main log's, for stderr
	f      *os.File // the file, if any
}

// AccessDelay is how late an access log line may be written: lines go out
// in batches, one write(2) for all those of AccessDelay (or 64 KiB),
// instead of one write and one wake-up of the writer per connection.
const AccessDelay = 100 * time.Millisecond

// OpenAccess opens the access log at dest: "stderr" shares main's output
// and buffer (and its format, with the level, so that the stream stays
// one kind of line), whose lines are then written in batches too until
// Close; "stdout" gets its own buffer, in format; anything
// else is a file, created if need be (mode 0640) and appended to, written
// as JSON lines whatever the format; a character device (/dev/null) will
// do, a directory or a named pipe will not (opening a pipe would wait for
// its reader).
func OpenAccess(dest, format string, main *Logs) (*Access, error) {
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.CallerKey, ec.StacktraceKey = zapcore.OmitKey, zapcore.OmitKey
	a := &Access{Dest: dest}
	var out zapcore.WriteSyncer
	switch dest {
	case AccessStderr:
		a.shared = main.w
		a.shared.SetDelay(AccessDelay) // the main log's lines batch too, meanwhile
		out = a.shared
	case AccessStdout:
		ec.LevelKey = zapcore.OmitKey
		a.w = NewWriter(os.Stdout, 1<<20)
		out = a.w
	default:
		format = "json"
		ec.LevelKey = zapcore.OmitKey
		if err := CheckAccess(dest); err != nil { // what is wrong, and the fix
			return nil, err
		}
		f, err := os.OpenFile(dest, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("access_log: %w", err)
		}
		a.f, a.w = f, NewWriter(f, 1<<20)
		out = a.w
	}
	if a.w != nil {
		a.w.SetDelay(AccessDelay)
	}
	enc := zapcore.NewJSONEncoder(ec)
	if format == "console" {
		if dest == AccessStderr {
			ec.EncodeLevel = zapcore.CapitalColorLevelEncoder
		}
		enc = zapcore.NewConsoleEncoder(ec)
	}
	a.Log = zap.New(zapcore.NewCore(enc, out, zapcore.InfoLevel), zap.ErrorOutput(out))
	return a, nil
}

// CheckAccess says whether OpenAccess(dest) would succeed, without creating
// anything (stickyd check-config): the file, if it is there, must be one
// that can be appended to; if not, its directory must be there and
// writable.
func CheckAccess(dest string) error {
	switch dest {
	case "", AccessOff, AccessStderr, AccessStdout:
		return nil
	}
	fi, err := os.Stat(dest)
	switch {
	case err == nil && !fi.Mode().IsRegular() && fi.Mode()&os.ModeCharDevice == 0:
		return fmt.Errorf("access_log: %s is not a regular file (%s)", dest, fi.Mode().Type())
	case err == nil:
		f, err := os.OpenFile(dest, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("access_log: %w (make it writable by stickyd's user, or choose another path)", err)
		}
		return f.Close()
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("access_log: %w", err)
	}
	dir := filepath.Dir(dest)
	if di, err := os.Stat(dir); err != nil || !di.IsDir() {
		return fmt.Errorf("access_log: %s: the directory %s is not there (create it, writable by stickyd's user, or choose another path)", dest, dir)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("access_log: %s: cannot create it in %s: %w (make the directory writable by stickyd's user, or choose another path)", dest, dir, err)
	}
	return nil
}

// Dropped returns the lines dropped because the output did not keep up.
// For stderr they are the main log's, and counted there.
func (a *Access) Dropped() int64 {
	if a == nil || a.w == nil {
		return 0
	}
	return a.w.Dropped()
}

// LastError returns the last error writing the access log's own output,
// or nil.
func (a *Access) LastError() error {
	if a == nil || a.w == nil {
		return nil
	}
	return a.w.LastError()
}

// Close writes out the queued lines, waiting at most timeout, and closes
// the file. Lines logged after it are dropped (and counted).
func (a *Access) Close(timeout time.Duration) {
	if a == nil {
		return
	}
	if a.shared != nil {
		a.shared.SetDelay(0)
		return
	}
	a.w.Close(timeout)
	if a.f != nil {
		a.f.Close()
	}
}
