package main

import (
	"fmt"
	"os"

	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/daemon"
	"github.com/urfave/cli/v2"
)

// proxyFlags are the flags of the proxy itself, shared by the default
// (serve) action, check-config and lookup: --config, then one flag per
// setting of config's table (a flag that is set overrides the file).
func proxyFlags() []cli.Flag {
	flags := []cli.Flag{&cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{config.EnvName("config")},
		Usage: "TOML config `FILE` (default ./config.toml when it exists)"}}
	for _, s := range config.Settings() {
		flags = append(flags, settingFlag(s))
	}
	return flags
}

// settingFlag is the flag of setting s, with its environment twin and
// the one default --help shows.
func settingFlag(s config.Setting) cli.Flag {
	name, env, usage, def := s.Flag(), []string{s.Env()}, s.Usage, s.Default
	switch s.Kind {
	case config.KindStrings:
		return &cli.StringSliceFlag{Name: name, EnvVars: env, Usage: usage, DefaultText: def}
	case config.KindBool:
		return &cli.BoolFlag{Name: name, EnvVars: env, Usage: usage, DefaultText: def}
	case config.KindInt:
		return &cli.IntFlag{Name: name, EnvVars: env, Usage: usage, DefaultText: orNone(def)}
	case config.KindFloat:
		return &cli.Float64Flag{Name: name, EnvVars: env, Usage: usage, DefaultText: orNone(def)}
	case config.KindDuration:
		return &cli.DurationFlag{Name: name, EnvVars: env, Usage: usage, DefaultText: orNone(def)}
	}
	return &cli.StringFlag{Name: name, EnvVars: env, Usage: usage, DefaultText: def}
}

// orNone is def, or "none" where the table shows no default (urfave/cli
// would print the zero value).
func orNone(def string) string {
	if def == "" {
		return "none"
	}
	return def
}

// usageError is a usage or configuration error: exit code 2.
func usageError(format string, args ...any) error {
	return cli.Exit("stickyd: "+fmt.Sprintf(format, args...), 2)
}

// loadConfig reads the config file (the --config flag, or ./config.toml
// when it exists), applies the flags that are set, and validates: the one
// path of serve, reload and check-config, so that check-config accepts
// exactly what serve accepts. With [workers], the command must be runnable.
func loadConfig(c *cli.Context, workerArgv []string) (*config.Config, error) {
	cfg, err := loadConfigFor(c, workerArgv, true)
	if err != nil || cfg.Workers == nil {
		return cfg, err
	}
	wc := daemon.WorkerConfig(cfg.Workers)
	if err := wc.Validate(); err != nil {
		return nil, usageError("%v", err)
	}
	return cfg, nil
}

// loadRoutingConfig is loadConfig for stickyd lookup: everything that
// decides which backend a client gets is checked, but [workers] needs no
// command (only the count names the workers).
func loadRoutingConfig(c *cli.Context, workerArgv []string) (*config.Config, error) {
	return loadConfigFor(c, workerArgv, false)
}

// loadConfigFor is loadConfig; withCommand false skips the worker command.
func loadConfigFor(c *cli.Context, workerArgv []string, withCommand bool) (*config.Config, error) {
	cfg := &config.Config{}
	path := c.String("config")
	if path == "" {
		if _, err := os.Stat("config.toml"); err == nil {
			path = "config.toml"
		}
	}
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usageError("config: %v", err)
		}
		cfg, err = config.Load(f)
		f.Close()
		if err != nil {
			return nil, usageError("%s: %v", path, err)
		}
	}
	if err := cfg.ApplyFlags(c, workerArgv); err != nil {
		return nil, usageError("%v", err)
	}
	validate := cfg.Validate
	if !withCommand {
		validate = cfg.ValidateRouting
	}
	if err := validate(); err != nil {
		if path != "" {
			return nil, usageError("%s: %v", path, err)
		}
		return nil, usageError("%v", err)
	}
	return cfg, nil
}
