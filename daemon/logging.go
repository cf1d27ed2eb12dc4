package daemon

import (
	"os"

	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/logging"
	"go.uber.org/zap"
)

// newLogger builds the root logger: JSON unless the format is console or
// stderr is a terminal. Warnings are sampled per cause and the output is
// written asynchronously, dropping (and counting) lines when it blocks
// (package logging).
func newLogger(cfg *config.Config) (*zap.Logger, *logging.Logs) {
	return logging.New(logging.Options{Level: cfg.Level(), Format: logFormat(cfg), Burst: cfg.LogBurst()}, os.Stderr)
}

// logFormat is cfg's log_format, or its default: console when stderr is a
// terminal, else json.
func logFormat(cfg *config.Config) string {
	if cfg.LogFormat != "" {
		return cfg.LogFormat
	}
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		return "console"
	}
	return "json"
}
