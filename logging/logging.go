package logging

import (
	"io"
	"sort"
	"strconv"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options configure New. Zero values mean the documented defaults.
type Options struct {
	Level  zapcore.Level
	Format string // "json" (default) or "console"
	// Burst is how many lines of one cause (level, message, "cause" field)
	// at warn level or above are written per second. Default 10; at most
	// 1<<24-1.
	Burst int
	// BufferBytes bounds the lines waiting for the output. Default 1 MiB.
	BufferBytes int
	// ReportEvery is the period of the summary of suppressed and dropped
	// lines. Default 10s.
	ReportEvery time.Duration
}

func (o Options) burst() int64 { return int64(min(orInt(o.Burst, 10), 1<<24-1)) }

func (o Options) bufferBytes() int { return orInt(o.BufferBytes, 1<<20) }

func (o Options) reportEvery() time.Duration {
	if o.ReportEvery <= 0 {
		return 10 * time.Second
	}
	return o.ReportEvery
}

func orInt(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Logs is what New set up behind the logger: the writer and the sampler.
type Logs struct {
	w     *Writer
	s     *sampler
	every time.Duration
}

// New returns a logger writing to out through a Writer and the sampler.
func New(o Options, out io.Writer) (*zap.Logger, *Logs) {
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	enc := zapcore.NewJSONEncoder(ec)
	if o.Format == "console" {
		ec.EncodeLevel = zapcore.CapitalColorLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	l := &Logs{w: NewWriter(out, o.bufferBytes()), every: o.reportEvery(),
		s: &sampler{burst: o.burst(), min: zapcore.WarnLevel}}
	core := zapcore.NewCore(enc, l.w, o.Level)
	return zap.New(&sampledCore{Core: core, s: l.s}, zap.AddCaller(), zap.ErrorOutput(l.w)), l
}

// Counts returns the lines suppressed by sampling and the lines dropped
// because the output did not keep up, since the start.
func (l *Logs) Counts() (suppressed, dropped int64) {
	return l.s.suppressed.Load(), l.w.Dropped()
}

// Close flushes the buffered lines, waiting at most timeout (the output
// may be blocked for good).
func (l *Logs) Close(timeout time.Duration) { l.w.Flush(timeout) }

// Report logs, every ReportEvery, how many lines were suppressed (with the
// five busiest causes) and dropped since the last report, if any. The
// returned function stops it and writes a last report.
func (l *Logs) Report(log *zap.Logger) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(l.every)
		defer t.Stop()
		var dropped int64
		for {
			select {
			case <-t.C:
				dropped = l.report(log, dropped)
			case <-done:
				l.report(log, dropped)
				return
			}
		}
	}()
	return func() { close(done); <-exited }
}

// report writes one summary and returns the dropped count it covered.
func (l *Logs) report(log *zap.Logger, droppedBefore int64) int64 {
	causes := l.s.take()
	dropped := l.w.Dropped()
	if len(causes) > 0 {
		sort.Slice(causes, func(i, j int) bool { return causes[i].Lines > causes[j].Lines })
		var total int64
		top := make([]string, 0, 5)
		for i, c := range causes {
			total += c.Lines
			if i < 5 {
				top = append(top, c.Cause+": "+strconv.FormatInt(c.Lines, 10))
			}
		}
		log.Warn("log lines suppressed (each cause is logged at most burst times a second)",
			zap.Int64("suppressed", total), zap.Int("causes", len(causes)), zap.Strings("top", top),
			zap.Int64("burst", l.s.burst), zap.Duration("interval", l.every))
	}
	if dropped > droppedBefore {
		log.Warn("log lines dropped: the log output did not keep up (is anything reading it?)",
			zap.Int64("dropped", dropped-droppedBefore), zap.Duration("interval", l.every))
	}
	return dropped
}
