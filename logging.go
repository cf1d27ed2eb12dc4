package main

import (
	"os"

	"github.com/stickyd/stickyd/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the root logger: JSON unless the format is console or
// stderr is a terminal.
func newLogger(cfg *config.Config) (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if cfg.LogLevel != "" {
		var err error
		if level, err = zapcore.ParseLevel(cfg.LogLevel); err != nil {
			return nil, err
		}
	}
	format := cfg.LogFormat
	if format == "" {
		format = "json"
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			format = "console"
		}
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Encoding = format
	zc.Sampling = nil
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	if format == "console" {
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	}
	zc.DisableStacktrace = true
	return zc.Build()
}
