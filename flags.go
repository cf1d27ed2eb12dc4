package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/stickyd/stickyd/config"
	"github.com/urfave/cli/v2"
)

// envName is a flag's environment twin: send-proxy -> STICKYD_SEND_PROXY.
func envName(flag string) []string {
	return []string{"STICKYD_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

// proxyFlags are the flags of the proxy itself, shared by the default
// (serve) action and by lookup. Each has a config key of the same name with
// underscores; a flag that is set overrides the file.
func proxyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: envName("config"), Usage: "TOML config `FILE` (default ./config.toml when it exists)"},
		&cli.StringFlag{Name: "listen", EnvVars: envName("listen"), Usage: "listen `ADDR` (default :3000)"},
		&cli.StringSliceFlag{Name: "backend", EnvVars: envName("backend"), Usage: "backend `ADDR` or name=ADDR (repeatable; unix:/path for Unix sockets; dns:HOST:PORT or dns:_service._proto.name for every address a DNS name resolves to)"},
		&cli.StringFlag{Name: "send-proxy", EnvVars: envName("send-proxy"), Usage: "PROXY header sent to backends: v2, v1 or none (default v2)"},
		&cli.StringSliceFlag{Name: "accept-proxy", EnvVars: envName("accept-proxy"), Usage: "`CIDR` of an upstream trusted to send PROXY headers (repeatable)"},
		&cli.BoolFlag{Name: "forward-tlvs", EnvVars: envName("forward-tlvs"), Usage: "pass the upstream's PROXY v2 TLVs on to backends"},
		&cli.StringFlag{Name: "client-ip-header", EnvVars: envName("client-ip-header"), Usage: "route HTTP clients by this request header (X-Forwarded-For, X-Real-IP, Forwarded)"},
		&cli.BoolFlag{Name: "ignore-missing-header", EnvVars: envName("ignore-missing-header"), Usage: "with --client-ip-header: route by the socket address when the header is missing instead of answering 400"},
		&cli.StringFlag{Name: "hash-key", EnvVars: envName("hash-key"), Usage: "balancer key: ip (default), or prefixes such as /24 or /24,/64"},
		&cli.Float64Flag{Name: "balance-factor", EnvVars: envName("balance-factor"), Usage: "bounded load: cap each backend at ceil(factor x average) connections (0 = off)"},
		&cli.DurationFlag{Name: "proxy-header-timeout", EnvVars: envName("proxy-header-timeout"), Usage: "deadline for an upstream PROXY header or HTTP header block (default 5s)"},
		&cli.DurationFlag{Name: "connect-timeout", EnvVars: envName("connect-timeout"), Usage: "deadline for one backend dial (default 5s)"},
		&cli.DurationFlag{Name: "idle-timeout", EnvVars: envName("idle-timeout"), Usage: "close connections idle both ways this long (default 0: never)"},
		&cli.DurationFlag{Name: "first-byte-timeout", EnvVars: envName("first-byte-timeout"), Usage: "close a connection whose backend sent nothing this long after the client's last byte (default 0: never)"},
		&cli.DurationFlag{Name: "drain-timeout", EnvVars: envName("drain-timeout"), Usage: "on SIGTERM, how long open connections may finish (default 30s)"},
		&cli.IntFlag{Name: "max-connections", EnvVars: envName("max-connections"), Usage: "cap on open client connections (default: from the open-file limit)"},
		&cli.StringFlag{Name: "engine", EnvVars: envName("engine"), Usage: "connection engine: epoll (default) or goroutine"},
		&cli.StringFlag{Name: "admin", EnvVars: envName("admin"), Usage: "admin and metrics listen `ADDR`, host:port or unix:/path (off by default; bind it to loopback or a Unix socket)"},
		&cli.StringFlag{Name: "admin-token-file", EnvVars: envName("admin-token-file"), Usage: "`FILE` holding the bearer token that drain and enable require (or the token itself in $STICKYD_ADMIN_TOKEN)"},
		&cli.StringFlag{Name: "admin-socket-mode", EnvVars: envName("admin-socket-mode"), Usage: "permission of a unix: admin socket, octal (default 0600)"},
		&cli.StringFlag{Name: "workers", EnvVars: envName("workers"), Usage: "launch `N` (or auto) worker processes running the command after --"},
		&cli.IntFlag{Name: "port-base", EnvVars: envName("port-base"), Usage: "worker i listens on 127.0.0.1:<port-base + i> (default: free ports chosen at start)"},
		&cli.StringFlag{Name: "socket-dir", EnvVars: envName("socket-dir"), Usage: "give workers Unix sockets `DIR`/worker-<i>.sock instead of ports"},
		&cli.StringFlag{Name: "health-check", EnvVars: envName("health-check"), Usage: "active health check of each backend: tcp, http or none (default none)"},
		&cli.DurationFlag{Name: "health-interval", EnvVars: envName("health-interval"), Usage: "time between health checks of a backend (default 2s)"},
		&cli.DurationFlag{Name: "health-timeout", EnvVars: envName("health-timeout"), Usage: "deadline for one health check (default 1s)"},
		&cli.IntFlag{Name: "health-rise", EnvVars: envName("health-rise"), Usage: "passed checks in a row that bring a backend back (default 2)"},
		&cli.IntFlag{Name: "health-fall", EnvVars: envName("health-fall"), Usage: "failed checks in a row that take a backend out (default 3)"},
		&cli.StringFlag{Name: "health-path", EnvVars: envName("health-path"), Usage: "HTTP health check request `PATH` (default /)"},
		&cli.IntFlag{Name: "health-expect-status", EnvVars: envName("health-expect-status"), Usage: "HTTP health check status (default: any 2xx or 3xx)"},
		&cli.StringFlag{Name: "health-send-proxy", EnvVars: envName("health-send-proxy"), Usage: "PROXY LOCAL header opening each check: v2, v1 or none (default: as --send-proxy)"},
		&cli.DurationFlag{Name: "health-cooldown", EnvVars: envName("health-cooldown"), Usage: "how long failed dials keep a backend out (default 5s)"},
		&cli.IntFlag{Name: "health-eject-after", EnvVars: envName("health-eject-after"), Usage: "failed dials in a row that start the cool-down (default 1)"},
		&cli.IntFlag{Name: "health-eject-after-closes", EnvVars: envName("health-eject-after-closes"), Usage: "connections in a row closed (or silent past --first-byte-timeout) before the backend's first byte that start the cool-down (default 3)"},
		&cli.StringFlag{Name: "dns-server", EnvVars: envName("dns-server"), Usage: "DNS server `ADDR` (host:port) for dns: backends (default: the system resolver)"},
		&cli.DurationFlag{Name: "dns-interval", EnvVars: envName("dns-interval"), Usage: "how often dns: backends are resolved again (default 10s)"},
		&cli.StringFlag{Name: "pid-file", EnvVars: envName("pid-file"), Usage: "write the process id to `FILE` while serving (follows SIGUSR2 upgrades)"},
		&cli.StringFlag{Name: "log-level", EnvVars: envName("log-level"), Usage: "debug, info, warn or error (default info)"},
		&cli.IntFlag{Name: "log-rate-limit", EnvVars: envName("log-rate-limit"), Usage: "warnings and errors written per second for each cause; the rest are counted (default 10)"},
		&cli.StringFlag{Name: "log-format", EnvVars: envName("log-format"), Usage: "console or json (default: console on a TTY, json otherwise)"},
	}
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
	wc := workerConfig(cfg.Workers)
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
	if err := applyFlags(c, cfg, workerArgv); err != nil {
		return nil, err
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

// applyFlags overrides cfg with every flag (or env twin) that is set.
func applyFlags(c *cli.Context, cfg *config.Config, workerArgv []string) error {
	str := map[string]*string{
		"listen": &cfg.Listen, "send-proxy": &cfg.SendProxy, "client-ip-header": &cfg.ClientIPHeader,
		"hash-key": &cfg.HashKey, "engine": &cfg.Engine, "admin": &cfg.Admin,
		"admin-token-file": &cfg.AdminTokenFile, "admin-socket-mode": &cfg.AdminSocketMode,
		"log-level": &cfg.LogLevel, "log-format": &cfg.LogFormat,
		"health-check": &cfg.Health.Check, "health-path": &cfg.Health.Path, "health-send-proxy": &cfg.Health.SendProxy,
		"dns-server": &cfg.DNSServer, "pid-file": &cfg.PIDFile,
	}
	for name, p := range str {
		if c.IsSet(name) {
			*p = c.String(name)
		}
	}
	dur := map[string]*config.Duration{
		"proxy-header-timeout": &cfg.ProxyHeaderTimeout, "connect-timeout": &cfg.ConnectTimeout,
		"idle-timeout": &cfg.IdleTimeout, "drain-timeout": &cfg.DrainTimeout,
		"first-byte-timeout": &cfg.FirstByteTimeout,
		"health-interval":    &cfg.Health.Interval, "health-timeout": &cfg.Health.Timeout,
		"health-cooldown": &cfg.Health.Cooldown, "dns-interval": &cfg.DNSInterval,
	}
	for name, p := range dur {
		if c.IsSet(name) {
			if c.Duration(name) < 0 {
				return usageError("flag --%s: negative duration", name)
			}
			p.Duration = c.Duration(name)
		}
	}
	if c.IsSet("forward-tlvs") {
		cfg.ForwardTLVs = c.Bool("forward-tlvs")
	}
	if c.IsSet("ignore-missing-header") {
		cfg.IgnoreMissingHeader = c.Bool("ignore-missing-header")
	}
	if c.IsSet("balance-factor") {
		cfg.BalanceFactor = c.Float64("balance-factor")
	}
	ints := map[string]*int{
		"max-connections": &cfg.MaxConnections, "log-rate-limit": &cfg.LogRateLimit, "health-rise": &cfg.Health.Rise, "health-fall": &cfg.Health.Fall,
		"health-expect-status": &cfg.Health.ExpectStatus, "health-eject-after": &cfg.Health.EjectAfter,
		"health-eject-after-closes": &cfg.Health.EjectAfterCloses,
	}
	for name, p := range ints {
		if c.IsSet(name) {
			*p = c.Int(name)
		}
	}
	if c.IsSet("accept-proxy") {
		cfg.AcceptProxy = c.StringSlice("accept-proxy")
	}
	if c.IsSet("backend") {
		// The backends on the command line are the whole set: they replace
		// the file's [[backend]] tables and its [workers] (unless --workers
		// is given too).
		cfg.Backends = nil
		if !c.IsSet("workers") {
			cfg.Workers = nil
		}
		for _, v := range c.StringSlice("backend") {
			b, err := config.ParseBackendFlag(v)
			if err != nil {
				return usageError("flag --backend: %v", err)
			}
			cfg.Backends = append(cfg.Backends, b)
		}
	}
	if err := applyWorkerFlags(c, cfg, workerArgv); err != nil {
		return err
	}
	return applyWorkerAddressFlags(c, cfg)
}

// applyWorkerFlags handles --workers N|auto and the worker command given
// after -- (argv).
func applyWorkerFlags(c *cli.Context, cfg *config.Config, argv []string) error {
	if !c.IsSet("workers") {
		if len(argv) > 0 {
			return usageError("unexpected arguments %q (a worker command needs --workers N|auto)", argv)
		}
		return nil
	}
	count, err := config.ParseCount(c.String("workers"))
	if err != nil {
		return usageError("flag --workers: %v", err)
	}
	if cfg.Workers == nil {
		cfg.Workers = &config.Workers{}
	}
	cfg.Workers.Count = count
	if len(argv) > 0 {
		cfg.Workers.Command = argv
	}
	return nil
}

// applyWorkerAddressFlags handles --port-base and --socket-dir, which need
// workers (--workers or a [workers] table).
func applyWorkerAddressFlags(c *cli.Context, cfg *config.Config) error {
	for _, name := range []string{"port-base", "socket-dir"} {
		if c.IsSet(name) && cfg.Workers == nil {
			return usageError("flag --%s: no workers to give it to (add --workers N|auto or a [workers] table)", name)
		}
	}
	if c.IsSet("port-base") {
		cfg.Workers.PortBase = c.Int("port-base")
	}
	if c.IsSet("socket-dir") {
		cfg.Workers.SocketDir = c.String("socket-dir")
	}
	return nil
}
