package main

import (
	"os"

	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/logging"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the root logger: JSON unless the format is console or
// stderr is a terminal. Warnings are sampled per cause and the output is
// written asynchronously, dropping (and counting) lines when it blocks
// (package logging).
func newLogger(cfg *config.Config) (*zap.Logger, *logging.Logs, error) {
	level := zapcore.InfoLevel
	if cfg.LogLevel != "" {
		var err error
		if level, err = zapcore.ParseLevel(cfg.LogLevel); err != nil {
			return nil, nil, err
		}
	}
	format := cfg.LogFormat
	if format == "" {
		format = "json"
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			format = "console"
		}
	}
	log, logs := logging.New(logging.Options{Level: level, Format: format, Burst: cfg.LogRateLimit}, os.Stderr)
	return log, logs, nil
}
