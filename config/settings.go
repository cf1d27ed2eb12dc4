package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Kind is the type of a setting's value, and so of its flag.
type Kind int

// The kinds of setting.
const (
	KindString   Kind = iota // string
	KindStrings              // []string, a repeatable flag
	KindBool                 // bool
	KindInt                  // int
	KindFloat                // float64
	KindDuration             // Duration (a Go duration string)
)

// Setting is one setting of the table: its config key, its flag and
// environment twins, its help text and default, and whether a reload
// (SIGHUP) applies it. The flags, the flag-to-config mapping and the
// reload rules all come from the table, so adding a setting is one row
// here, the component that uses it, and a test case (settings_test.go).
type Setting struct {
	// Key is the config key: "send_proxy", or "health.rise" in the
	// [health] table.
	Key string
	// Kind is the type of the value.
	Kind Kind
	// Usage is the flag's help text, without the default.
	Usage string
	// Default is the default as --help shows it; "" when there is none
	// worth showing. A duration or number here is the default the
	// accessors resolve (defaultDuration, defaultInt).
	Default string
	// Live: a reload applies a change of this key; otherwise the change
	// waits for a restart or a SIGUSR2 upgrade.
	Live bool

	flag string                              // flag name when not derived from Key
	set  func(Setting, *Config, Flags) error // applies a flag set on the command line; default setField
}

// Flag is the setting's flag: send_proxy is --send-proxy, health.rise is
// --health-rise.
func (s Setting) Flag() string {
	if s.flag != "" {
		return s.flag
	}
	return strings.NewReplacer(".", "-", "_", "-").Replace(s.Key)
}

// Env is the flag's environment twin: STICKYD_SEND_PROXY.
func (s Setting) Env() string { return EnvName(s.Flag()) }

// EnvName is the environment twin of flag: send-proxy is
// STICKYD_SEND_PROXY.
func EnvName(flag string) string {
	return "STICKYD_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Flags are the flags given on the command line or in the environment,
// by flag name (urfave/cli's *cli.Context is one). A value is read only
// for a flag that IsSet.
type Flags interface {
	IsSet(name string) bool
	String(name string) string
	StringSlice(name string) []string
	Bool(name string) bool
	Int(name string) int
	Float64(name string) float64
	Duration(name string) time.Duration
}

// settings is the table. Keys in the [workers] table are named by their
// flag (workers.count is --workers).
var settings = []Setting{
	{Key: "listen", Kind: KindString, Usage: "listen `ADDR`", Default: ":3000"},
	{Key: "backend", Kind: KindStrings, Live: true, set: setBackends, Usage: "backend `ADDR` or name=ADDR (repeatable; unix:/path for Unix sockets; dns:HOST:PORT or dns:_service._proto.name for every address a DNS name resolves to)"},
	{Key: "send_proxy", Kind: KindString, Default: "v2", Usage: "PROXY header sent to backends: v2, v1 or none"},
	{Key: "accept_proxy", Kind: KindStrings, Usage: "`CIDR` of an upstream trusted to send PROXY headers (repeatable)"},
	{Key: "forward_tlvs", Kind: KindBool, Usage: "pass the upstream's PROXY v2 TLVs on to backends"},
	{Key: "client_ip_header", Kind: KindString, Usage: "route HTTP clients by this request header (X-Forwarded-For, X-Real-IP, Forwarded)"},
	{Key: "ignore_missing_header", Kind: KindBool, Usage: "with --client-ip-header: route by the socket address when the header is missing instead of answering 400"},
	{Key: "hash_key", Kind: KindString, Live: true, Default: "ip", Usage: "balancer key: ip, or prefixes such as /24 or /24,/64"},
	{Key: "balance_factor", Kind: KindFloat, Live: true, Default: "0 (off)", Usage: "bounded load: cap each backend at ceil(factor x average) connections"},
	{Key: "proxy_header_timeout", Kind: KindDuration, Default: "5s", Usage: "deadline for an upstream PROXY header or HTTP header block"},
	{Key: "connect_timeout", Kind: KindDuration, Live: true, Default: "5s", Usage: "deadline for one backend dial"},
	{Key: "idle_timeout", Kind: KindDuration, Default: "0 (never)", Usage: "close connections idle both ways this long"},
	{Key: "half_close_timeout", Kind: KindDuration, Default: "0 (as idle_timeout)", Usage: "once one side has closed (FIN or reset), close the connection after this long without a byte moving"},
	{Key: "first_byte_timeout", Kind: KindDuration, Default: "0 (never)", Usage: "close a connection whose backend sent nothing this long after the client's last byte"},
	{Key: "drain_timeout", Kind: KindDuration, Live: true, Default: "30s", Usage: "on SIGTERM, how long open connections may finish"},
	{Key: "max_connections", Kind: KindInt, Default: "from the open-file limit", Usage: "cap on open client connections"},
	{Key: "max_connections_per_client", Kind: KindInt, Live: true, Default: "0 (none)", Usage: "cap on one client's open connections (an IPv4 address or an IPv6 /64, as PROXY or HTTP headers tell it); more are refused"},
	{Key: "max_connection_rate_per_client", Kind: KindInt, Live: true, Default: "0 (none)", Usage: "cap on the connections one client opens a second (counted as --max-connections-per-client counts); more are refused until it slows down"},
	{Key: "engine", Kind: KindString, Default: "epoll", Usage: "connection engine: epoll or goroutine"},
	{Key: "admin", Kind: KindString, Default: "off", Usage: "admin and metrics listen `ADDR`, host:port or unix:/path (bind it to loopback or a Unix socket)"},
	{Key: "admin_token_file", Kind: KindString, Usage: "`FILE` holding the bearer token that drain and enable require (or the token itself in $STICKYD_ADMIN_TOKEN)"},
	{Key: "admin_socket_mode", Kind: KindString, Default: "0600", Usage: "permission of a unix: admin socket, octal"},
	{Key: "workers.count", flag: "workers", Kind: KindString, set: setWorkerCount, Usage: "launch `N` (or auto) worker processes running the command after --"},
	{Key: "workers.port_base", flag: "port-base", Kind: KindInt, set: setWorkerAddress, Default: "free ports chosen at start", Usage: "worker i listens on 127.0.0.1:<port-base + i>"},
	{Key: "workers.socket_dir", flag: "socket-dir", Kind: KindString, set: setWorkerAddress, Usage: "give workers Unix sockets `DIR`/worker-<i>.sock instead of ports"},
	{Key: "health.check", Kind: KindString, Live: true, Default: "none", Usage: "active health check of each backend: tcp, http or none"},
	{Key: "health.interval", Kind: KindDuration, Live: true, Default: "2s", Usage: "time between health checks of a backend"},
	{Key: "health.timeout", Kind: KindDuration, Live: true, Default: "1s", Usage: "deadline for one health check"},
	{Key: "health.rise", Kind: KindInt, Live: true, Default: "2", Usage: "passed checks in a row that bring a backend back"},
	{Key: "health.fall", Kind: KindInt, Live: true, Default: "3", Usage: "failed checks in a row that take a backend out"},
	{Key: "health.path", Kind: KindString, Live: true, Default: "/", Usage: "HTTP health check request `PATH`"},
	{Key: "health.expect_status", Kind: KindInt, Live: true, Default: "any 2xx or 3xx", Usage: "HTTP health check status"},
	{Key: "health.send_proxy", Kind: KindString, Live: true, Default: "as --send-proxy", Usage: "PROXY LOCAL header opening each check: v2, v1 or none"},
	{Key: "health.cooldown", Kind: KindDuration, Live: true, Default: "5s", Usage: "how long failed dials keep a backend out"},
	{Key: "health.eject_after", Kind: KindInt, Live: true, Default: "1", Usage: "failed dials in a row that start the cool-down"},
	{Key: "health.eject_after_closes", Kind: KindInt, Live: true, Default: "3", Usage: "connections in a row closed (or silent past --first-byte-timeout) before the backend's first byte that start the cool-down"},
	{Key: "dns_server", Kind: KindString, Live: true, Default: "the system resolver", Usage: "DNS server `ADDR` (host:port) for dns: backends"},
	{Key: "dns_interval", Kind: KindDuration, Live: true, Default: "10s", Usage: "how often dns: backends are resolved again"},
	{Key: "pid_file", Kind: KindString, Usage: "write the process id to `FILE` while serving (follows SIGUSR2 upgrades)"},
	{Key: "log_level", Kind: KindString, Default: "info", Usage: "debug, info, warn or error"},
	{Key: "log_rate_limit", Kind: KindInt, Default: "10", Usage: "warnings and errors written per second for each cause; the rest are counted"},
	{Key: "log_format", Kind: KindString, Default: "console on a TTY, json otherwise", Usage: "console or json"},
	{Key: "access_log", Kind: KindString, Live: true, Default: "off", Usage: "one line per client connection when it ends, to `DEST`: stderr, stdout or a file (appended to, reopened on SIGHUP)"},
}

// byKey indexes settings by key.
var byKey = func() map[string]*Setting {
	m := make(map[string]*Setting, len(settings))
	for i := range settings {
		m[settings[i].Key] = &settings[i]
	}
	return m
}()

// Settings returns the table of settings, in --help order.
func Settings() []Setting { return append([]Setting(nil), settings...) }

// Lookup returns the setting of key ("health.rise").
func Lookup(key string) (Setting, bool) {
	s, ok := byKey[key]
	if !ok {
		return Setting{}, false
	}
	return *s, true
}

// RestartKeys returns the keys that differ between a and b and that a
// reload does not apply: they need a restart (or a SIGUSR2 upgrade).
func RestartKeys(a, b *Config) []string {
	var out []string
	for _, k := range ChangedKeys(a, b) {
		if s, ok := byKey[k]; !ok || !s.Live {
			out = append(out, k)
		}
	}
	return out
}

// ApplyFlags overrides c with every flag that is set; workerArgv is the
// worker command given after "--". The flags on the command line win over
// the file; --backend replaces the file's backends (and its [workers],
// unless --workers is given too).
func (c *Config) ApplyFlags(f Flags, workerArgv []string) error {
	if !f.IsSet("workers") && len(workerArgv) > 0 {
		return fmt.Errorf("unexpected arguments %q (a worker command needs --workers N|auto)", workerArgv)
	}
	for _, s := range settings {
		if !f.IsSet(s.Flag()) {
			continue
		}
		set := s.set
		if set == nil {
			set = setField
		}
		if err := set(s, c, f); err != nil {
			return err
		}
		c.forget(s.Key)
	}
	if len(workerArgv) > 0 {
		c.Workers.Command = workerArgv
	}
	return nil
}

// forget drops the file lines of key and of its tables (backend[2]):
// its value now comes from a flag, which errors name instead.
func (c *Config) forget(key string) {
	for k := range c.lines {
		if k == key || strings.HasPrefix(k, key+"[") {
			delete(c.lines, k)
		}
	}
}

// setField applies the flag of s to the field tagged s.Key.
func setField(s Setting, c *Config, f Flags) error {
	v := c.field(s.Key)
	name := s.Flag()
	switch s.Kind {
	case KindString:
		v.SetString(f.String(name))
	case KindStrings:
		v.Set(reflect.ValueOf(f.StringSlice(name)))
	case KindBool:
		v.SetBool(f.Bool(name))
	case KindInt:
		v.SetInt(int64(f.Int(name)))
	case KindFloat:
		v.SetFloat(f.Float64(name))
	case KindDuration:
		if f.Duration(name) < 0 {
			return fmt.Errorf("flag --%s: negative duration", name)
		}
		v.Set(reflect.ValueOf(durationOf(f.Duration(name))))
	}
	return nil
}

func durationOf(d time.Duration) Duration { return Duration{d} }

// field returns the field of c tagged key ("health.rise"); the zero Value
// when there is none.
func (c *Config) field(key string) reflect.Value {
	v := reflect.ValueOf(c).Elem()
	for part := range strings.SplitSeq(key, ".") {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}
			}
			v = v.Elem()
		}
		v = fieldByTag(v, part)
		if !v.IsValid() {
			return v
		}
	}
	return v
}

func fieldByTag(v reflect.Value, tag string) reflect.Value {
	f, ok := fieldByKey(v.Type(), tag)
	if !ok {
		return reflect.Value{}
	}
	return v.FieldByIndex(f.Index)
}

// fieldByKey is struct type t's field whose TOML key is key.
func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		if f := t.Field(i); tomlKey(f) == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// tomlKey is f's key in a config file (its toml tag without options), or "".
func tomlKey(f reflect.StructField) string {
	key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	return key
}

// setBackends applies --backend: the backends on the command line are the
// whole set, replacing the file's [[backend]] tables and its [workers]
// (unless --workers is given too).
func setBackends(_ Setting, c *Config, f Flags) error {
	c.Backends = nil
	if !f.IsSet("workers") {
		c.Workers = nil
	}
	for _, v := range f.StringSlice("backend") {
		b, err := ParseBackendFlag(v)
		if err != nil {
			return fmt.Errorf("flag --backend: %w", err)
		}
		c.Backends = append(c.Backends, b)
	}
	return nil
}

// setWorkerCount applies --workers N|auto.
func setWorkerCount(_ Setting, c *Config, f Flags) error {
	count, err := ParseCount(f.String("workers"))
	if err != nil {
		return fmt.Errorf("flag --workers: %w", err)
	}
	if c.Workers == nil {
		c.Workers = &Workers{}
	}
	c.Workers.Count = count
	return nil
}

// setWorkerAddress applies --port-base or --socket-dir, which need
// workers (--workers or a [workers] table).
func setWorkerAddress(s Setting, c *Config, f Flags) error {
	if c.Workers == nil {
		return fmt.Errorf("flag --%s: no workers to give it to (add --workers N|auto or a [workers] table)", s.Flag())
	}
	return setField(s, c, f)
}

// defaultDuration is the default of a duration setting, from the table.
func defaultDuration(key string) time.Duration {
	d, err := time.ParseDuration(byKey[key].Default)
	if err != nil {
		panic("config: no duration default for " + key)
	}
	return d
}

// defaultInt is the default of a number setting, from the table.
func defaultInt(key string) int {
	n, err := strconv.Atoi(byKey[key].Default)
	if err != nil {
		panic("config: no number default for " + key)
	}
	return n
}
