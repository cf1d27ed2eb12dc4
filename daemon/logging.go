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
	format := cfg.LogFormat
	if format == "" {
		format = "json"
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			format = "console"
		}
	}
	return logging.New(logging.Options{Level: cfg.Level(), Format: format, Burst: cfg.LogBurst()}, os.Stderr)
}
