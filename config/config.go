// Package config holds stickyd's configuration: the TOML file, the flags that
// override it, defaults and validation.
//
// Config is a plain struct. A zero field means "use the default"; defaults are
// resolved by accessor methods and never written back, so a Config printed
// after loading shows what the operator wrote.
//
//	cfg, err := config.Load(f)      // unknown keys and bad types: errors with line numbers
//	if err == nil { err = cfg.Validate() } // bad values: errors naming the key and its line
//	timeout := cfg.HeaderTimeout()  // 5s when proxy_header_timeout is unset
//
// Settings (settings.go) is the one table of settings: each row names a
// key, its flag and STICKYD_ variable, its help text and default, and
// whether a reload applies it. The command line builds its flags from it,
// ApplyFlags maps them onto a Config, and RestartKeys tells a reload what
// it cannot apply. Adding a setting is a field here, a row there, its use,
// and a case in settings_test.go (the table walk fails without one).
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/stickyd/stickyd/balancer"
	"go.uber.org/zap/zapcore"
)

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("config: invalid")

// Config is the whole configuration. Field tags name the TOML keys; each key
// has a flag twin with dashes (send_proxy is --send-proxy).
type Config struct {
	// Listen is the proxy's listening address. Default ":3000".
	Listen string `toml:"listen"`
	// Backends are the static backends, [[backend]] tables.
	Backends []Backend `toml:"backend"`
	// SendProxy is the PROXY header written to backends: "v2" (default), "v1" or "none".
	SendProxy string `toml:"send_proxy"`
	// AcceptProxy lists CIDRs (or bare IPs) of upstreams trusted to send a
	// PROXY header. Peers inside must send one; a header from anyone else is
	// refused.
	AcceptProxy []string `toml:"accept_proxy"`
	// ForwardTLVs passes the upstream's PROXY v2 TLVs on to backends.
	ForwardTLVs bool `toml:"forward_tlvs"`
	// ClientIPHeader, when set, takes the client address from this HTTP
	// request header (X-Forwarded-For, X-Real-IP, Forwarded).
	ClientIPHeader string `toml:"client_ip_header"`
	// IgnoreMissingHeader routes by the socket address when ClientIPHeader
	// is missing, instead of answering 400.
	IgnoreMissingHeader bool `toml:"ignore_missing_header"`
	// HashKey is the balancer key: "ip" (default), or a prefix such as "/24"
	// or "/24,/64" (IPv4 prefix, IPv6 prefix).
	HashKey string `toml:"hash_key"`
	// BalanceFactor > 1 bounds each backend's active connections to
	// ceil(factor x average); 0 disables the bound.
	BalanceFactor float64 `toml:"balance_factor"`
	// ProxyHeaderTimeout bounds reading the upstream PROXY header (and the
	// HTTP header block in client_ip_header mode). Default 5s.
	ProxyHeaderTimeout Duration `toml:"proxy_header_timeout"`
	// ConnectTimeout bounds one backend dial. Default 5s.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// IdleTimeout closes a connection with no traffic either way for this
	// long. Default 0: never.
	IdleTimeout Duration `toml:"idle_timeout"`
	// HalfCloseTimeout replaces IdleTimeout once one side of a connection
	// has closed (FIN or reset): the other is closed after this long
	// without a byte moving. Default 0: IdleTimeout applies.
	HalfCloseTimeout Duration `toml:"half_close_timeout"`
	// FirstByteTimeout closes a connection whose backend has sent nothing
	// this long after it was relayed or after the client's last byte.
	// Default 0: never (a silent backend holds its client; see README).
	FirstByteTimeout Duration `toml:"first_byte_timeout"`
	// DrainTimeout is how long open connections may finish after SIGTERM.
	// Default 30s.
	DrainTimeout Duration `toml:"drain_timeout"`
	// MaxConnections caps concurrent client connections. Default: derived
	// from the open-file limit so that stickyd never runs out of descriptors.
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerClient caps one client's open connections (an IPv4
	// address or an IPv6 /64). Default 0: no cap.
	MaxConnectionsPerClient int `toml:"max_connections_per_client"`
	// MaxConnectionRatePerClient caps the connections one client may open
	// a second (counted as MaxConnectionsPerClient counts). Default 0: no
	// cap.
	MaxConnectionRatePerClient int `toml:"max_connection_rate_per_client"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `toml:"log_level"`
	// LogFormat is "console" or "json"; default console on a TTY, else json.
	LogFormat string `toml:"log_format"`
	// AccessLog is where the access log goes (one line per client
	// connection when it ends): "stderr", "stdout" or a file's path.
	// Default "" or "off": none.
	AccessLog string `toml:"access_log"`
	// LogRateLimit is how many warnings and errors of one cause are
	// written per second; the rest are counted. Default 10.
	LogRateLimit int `toml:"log_rate_limit"`
	// Engine selects the connection engine: "epoll" (default where
	// available) or "goroutine".
	Engine string `toml:"engine"`
	// Admin is the admin/metrics listener address, host:port or
	// unix:/path; empty disables it.
	Admin string `toml:"admin"`
	// AdminTokenFile names a file holding the bearer token that drain and
	// enable require (the environment variable STICKYD_ADMIN_TOKEN may hold
	// the token itself instead). Default: no token.
	AdminTokenFile string `toml:"admin_token_file"`
	// AdminSocketMode is the permission of a unix: admin socket, in octal
	// ("0660"). Default "0600".
	AdminSocketMode string `toml:"admin_socket_mode"`
	// Health is the [health] table: active and passive health checks.
	Health Health `toml:"health"`
	// DNSServer is the DNS server (host:port) that resolves dns backends.
	// Default: the system resolver (/etc/resolv.conf).
	DNSServer string `toml:"dns_server"`
	// DNSInterval is how often dns backends are resolved again. Default 10s.
	DNSInterval Duration `toml:"dns_interval"`
	// PIDFile, when set, is written with the process id once stickyd
	// serves (again by the new process after a SIGUSR2 upgrade) and removed
	// at exit.
	PIDFile string `toml:"pid_file"`
	// Workers, when present, makes stickyd launch its own backends.
	Workers *Workers `toml:"workers"`

	lines map[string]int // key path -> line in the file, for error messages
}

// Backend is one [[backend]] table: a static backend (Address) or a DNS
// name that stands for as many backends as it resolves to (DNS).
type Backend struct {
	// Name identifies the backend to the balancer; it decides which client
	// IPs the backend gets. Default: Address. Not allowed with DNS.
	Name string `toml:"name"`
	// Address is host:port, or unix:/path for a Unix socket.
	Address string `toml:"address"`
	// DNS is "host:port" (every A/AAAA address of host, on port) or an SRV
	// name "_service._proto.name" (every target and port). Each address
	// found is a backend named by its "ip:port", so replicas that resolve
	// the same name agree on the names. Re-resolved every dns_interval.
	DNS string `toml:"dns"`
	// Weight is the relative share of clients (of each address, for DNS).
	// Default 1.
	Weight int `toml:"weight"`
}

// Health is the [health] table. Each key has a flag twin prefixed with
// "health-" (check is --health-check).
type Health struct {
	// Check is the active check: "tcp" (connect), "http" (GET Path) or
	// "none" (default).
	Check string `toml:"check"`
	// Interval between checks of a backend. Default 2s.
	Interval Duration `toml:"interval"`
	// Timeout bounds one check. Default 1s; at most Interval.
	Timeout Duration `toml:"timeout"`
	// Rise passes in a row bring a backend back. Default 2.
	Rise int `toml:"rise"`
	// Fall failures in a row take a backend out. Default 3.
	Fall int `toml:"fall"`
	// Path is the HTTP check's path. Default "/".
	Path string `toml:"path"`
	// ExpectStatus is the HTTP check's status; default any 2xx or 3xx.
	ExpectStatus int `toml:"expect_status"`
	// SendProxy is the PROXY header opening each check connection, as a
	// LOCAL header: "v2", "v1" or "none". Default: as send_proxy.
	SendProxy string `toml:"send_proxy"`
	// Cooldown is the passive ejection after failed dials. Default 5s.
	Cooldown Duration `toml:"cooldown"`
	// EjectAfter is how many failed dials in a row start the cool-down.
	// Default 1.
	EjectAfter int `toml:"eject_after"`
	// EjectAfterCloses is how many connections in a row a backend may close
	// before its first byte (or leave silent past first_byte_timeout)
	// before the cool-down starts. Default 3.
	EjectAfterCloses int `toml:"eject_after_closes"`
}

// Workers is the [workers] table: worker processes stickyd launches.
type Workers struct {
	// Command is the worker's argv.
	Command []string `toml:"command"`
	// Count is a number or "auto" (one per CPU, the default).
	Count any `toml:"count"`
	// PortBase: worker i listens on 127.0.0.1:<PortBase+i>. 0 (the
	// default): stickyd picks a block of free ports at start.
	PortBase int `toml:"port_base"`
	// SocketDir, if set, gives workers Unix sockets instead of ports.
	SocketDir string `toml:"socket_dir"`
	// Env is added to the inherited environment.
	Env map[string]string `toml:"env"`
	// Dir is the working directory.
	Dir string `toml:"dir"`
	// StartupTimeout bounds the wait for a worker's port. Default 30s.
	StartupTimeout Duration `toml:"startup_timeout"`
	// StopTimeout is the SIGTERM-to-SIGKILL grace. Default 10s.
	StopTimeout Duration `toml:"stop_timeout"`
	// MaxMemory: a worker whose memory (the resident set of its process
	// group) stays above it is replaced without downtime, as a rolling
	// restart replaces it ("512MiB"). 0 (the default): no limit.
	MaxMemory ByteSize `toml:"max_memory"`
	// Output is where the workers' stdout and stderr go: "log" (the
	// default; each line in stickyd's log with worker=<i>) or "inherit"
	// (stickyd's own stdout and stderr, unchanged, as Node's cluster
	// does: JSON app logs reach the log pipeline as they are).
	Output string `toml:"output"`
	// IPC is "node" (the default: each worker gets a Node IPC channel, on
	// which stickyd relays @socket.io/cluster-adapter's messages between
	// the workers, as Node's cluster primary does) or "none".
	IPC string `toml:"ipc"`
}

// ByteSize is a size in bytes written with a unit: "512MiB", "1.5GiB",
// "600MB". KiB, MiB, GiB, TiB (or Ki, Mi, Gi, Ti, as Kubernetes writes
// them) are powers of 1024; KB, MB, GB, TB of 1000; B or none, bytes.
// Units are case-insensitive. K, M, G alone are refused: Docker reads
// them as powers of 1024 and Kubernetes as powers of 1000.
type ByteSize int64

// byteUnits are ByteSize's units, lower-cased.
var byteUnits = map[string]float64{"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
	"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}

// UnmarshalText parses a size with its unit.
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	}
	if len(unit) == 1 && strings.Contains("kmgt", unit) {
		return fmt.Errorf("%q is ambiguous: write %s%siB (powers of 1024) or %s%sB (powers of 1000)",
			s, num, strings.ToUpper(unit), num, strings.ToUpper(unit))
	}
	mult, ok := byteUnits[unit]
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || num == "" {
		return fmt.Errorf("want a size such as \"512MiB\" or \"1GiB\" (units B, KB, MB, GB, KiB, MiB, GiB), got %q", s)
	}
	if v*mult >= 1<<62 {
		return fmt.Errorf("size %q is too large", s)
	}
	if v > 0 && v*mult < 1 {
		return fmt.Errorf("size %q is less than a byte", s)
	}
	*b = ByteSize(v * mult)
	return nil
}

// MarshalText formats the size in bytes.
func (b ByteSize) MarshalText() ([]byte, error) {
	return []byte(strconv.FormatInt(int64(b), 10) + "B"), nil
}

// Duration is a time.Duration written as a Go duration string ("5s").
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText formats the duration.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Load decodes a TOML document. Unknown keys and values of the wrong type are
// errors that carry the line number. Load does not validate values; call
// Validate.
func Load(r io.Reader) (*Config, error) {
	src, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("config: read: %w", err)
	}
	cfg := &Config{}
	dec := toml.NewDecoder(bytes.NewReader(src))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, describeDecodeError(err)
	}
	cfg.lines = keyLines(src)
	return cfg, nil
}

func describeDecodeError(err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		key := strings.Join(de.Key(), ".")
		if key != "" {
			return fmt.Errorf("%w: line %d column %d: key %q: %s%s", ErrInvalid, row, col, key, de.Error(), withHint(keyHint(de.Key())))
		}
		return fmt.Errorf("%w: line %d column %d: %s", ErrInvalid, row, col, de.Error())
	}
	var se *toml.StrictMissingError
	if errors.As(err, &se) && len(se.Errors) > 0 {
		e := se.Errors[0]
		row, _ := e.Position()
		return fmt.Errorf("%w: line %d: unknown key %q%s", ErrInvalid, row, strings.Join(e.Key(), "."), withHint(keyHint(e.Key())))
	}
	return fmt.Errorf("%w: %w", ErrInvalid, err)
}

// withHint is hint as the end of an error message, or "".
func withHint(hint string) string {
	if hint == "" {
		return ""
	}
	return " (" + hint + ")"
}

// ListenAddr returns the listen address, default ":3000".
func (c *Config) ListenAddr() string { return orDefaultString(c.Listen, "listen") }

// SendProxyName is send_proxy with its default: "v2", "v1" or "none".
func (c *Config) SendProxyName() string { return orDefaultString(c.SendProxy, "send_proxy") }

// EngineName is engine with its default: "epoll" or "goroutine".
func (c *Config) EngineName() string { return orDefaultString(c.Engine, "engine") }

// KeyMode is hash_key, parsed (Validate has checked it); "ip" by default.
func (c *Config) KeyMode() balancer.KeyMode {
	k, _ := balancer.ParseKeyMode(c.HashKey)
	return k
}

// Level is log_level, parsed (Validate has checked it); info by default.
func (c *Config) Level() zapcore.Level {
	l, err := zapcore.ParseLevel(orDefaultString(c.LogLevel, "log_level"))
	if err != nil {
		return zapcore.InfoLevel
	}
	return l
}

// LogBurst is log_rate_limit, default 10.
func (c *Config) LogBurst() int { return orDefaultInt(c.LogRateLimit, "log_rate_limit") }

// ProxyVersion returns the outgoing PROXY version: 2, 1 or 0 for none.
func (c *Config) ProxyVersion() byte { return versionOf(c.SendProxyName()) }

func versionOf(s string) byte {
	switch s {
	case "v1":
		return 1
	case "none":
		return 0
	}
	return 2
}

// HeaderTimeout is proxy_header_timeout, default 5s.
func (c *Config) HeaderTimeout() time.Duration {
	return orDefault(c.ProxyHeaderTimeout, defaultDuration("proxy_header_timeout"))
}

// DialTimeout is connect_timeout, default 5s.
func (c *Config) DialTimeout() time.Duration {
	return orDefault(c.ConnectTimeout, defaultDuration("connect_timeout"))
}

// Idle is idle_timeout; zero means no idle timeout.
func (c *Config) Idle() time.Duration { return c.IdleTimeout.Duration }

// AdminSocketPerm is admin_socket_mode (validated), 0600 by default.
func (c *Config) AdminSocketPerm() os.FileMode {
	if m, err := strconv.ParseUint(c.AdminSocketMode, 8, 32); err == nil && c.AdminSocketMode != "" {
		return os.FileMode(m)
	}
	return 0o600
}

// Drain is drain_timeout, default 30s.
func (c *Config) Drain() time.Duration {
	return orDefault(c.DrainTimeout, defaultDuration("drain_timeout"))
}

// DNSRefresh is dns_interval, default 10s.
func (c *Config) DNSRefresh() time.Duration {
	return orDefault(c.DNSInterval, defaultDuration("dns_interval"))
}

// HealthInterval is health.interval, default 2s.
func (c *Config) HealthInterval() time.Duration {
	return orDefault(c.Health.Interval, defaultDuration("health.interval"))
}

// HealthTimeout is health.timeout, default 1s; never more than the interval.
func (c *Config) HealthTimeout() time.Duration {
	return min(orDefault(c.Health.Timeout, defaultDuration("health.timeout")), c.HealthInterval())
}

// HealthRise is health.rise, default 2.
func (c *Config) HealthRise() int { return orDefaultInt(c.Health.Rise, "health.rise") }

// HealthFall is health.fall, default 3.
func (c *Config) HealthFall() int { return orDefaultInt(c.Health.Fall, "health.fall") }

// HealthPath is health.path, default "/".
func (c *Config) HealthPath() string { return orDefaultString(c.Health.Path, "health.path") }

// Cooldown is health.cooldown, default 5s.
func (c *Config) Cooldown() time.Duration {
	return orDefault(c.Health.Cooldown, defaultDuration("health.cooldown"))
}

// EjectAfter is health.eject_after, default 1.
func (c *Config) EjectAfter() int { return orDefaultInt(c.Health.EjectAfter, "health.eject_after") }

// EjectAfterCloses is health.eject_after_closes, default 3.
func (c *Config) EjectAfterCloses() int {
	return orDefaultInt(c.Health.EjectAfterCloses, "health.eject_after_closes")
}

// DNSTargets lists the dns keys of the [[backend]] tables, in order.
func (c *Config) DNSTargets() []string {
	var out []string
	for _, b := range c.Backends {
		if b.DNS != "" {
			out = append(out, b.DNS)
		}
	}
	return out
}

// HealthSendProxy is the PROXY version of health-check connections:
// health.send_proxy, defaulting to send_proxy.
func (c *Config) HealthSendProxy() byte {
	if c.Health.SendProxy == "" {
		return c.ProxyVersion()
	}
	return versionOf(c.Health.SendProxy)
}

// Trusted parses accept_proxy into prefixes. Validate has checked them.
func (c *Config) Trusted() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(c.AcceptProxy))
	for _, s := range c.AcceptProxy {
		if p, err := parsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// WorkerCount resolves workers.count: a number, or "auto" (the default) for
// one per CPU that stickyd may use (see autoWorkers: a container's CPU
// limit counts).
func (w *Workers) WorkerCount() int {
	switch v := w.Count.(type) {
	case int64:
		return int(v)
	case int:
		return v
	}
	return autoWorkers()
}

func orDefaultString(s, key string) string {
	if s == "" {
		return byKey[key].Default
	}
	return s
}

func orDefaultInt(n int, key string) int {
	if n == 0 {
		return defaultInt(key)
	}
	return n
}

func orDefault(d Duration, def time.Duration) time.Duration {
	if d.Duration == 0 {
		return def
	}
	return d.Duration
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParseBackendFlag parses a --backend value: "ADDR", "name=ADDR", or
// "dns:HOST:PORT" / "dns:_service._proto.name" for a DNS backend.
func ParseBackendFlag(s string) (Backend, error) {
	if target, ok := strings.CutPrefix(s, "dns:"); ok {
		if target == "" {
			return Backend{}, fmt.Errorf("want dns:HOST:PORT or dns:_service._proto.name, got %q", s)
		}
		return Backend{DNS: target}, nil
	}
	name, addr, ok := strings.Cut(s, "=")
	if !ok {
		addr, name = s, s
	}
	if addr == "" || name == "" {
		return Backend{}, fmt.Errorf("want ADDR or name=ADDR, got %q", s)
	}
	return Backend{Name: name, Address: addr}, nil
}

// ParseCount parses a --workers value: a positive number or "auto".
func ParseCount(s string) (any, error) {
	if s == "auto" {
		return "auto", nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return nil, fmt.Errorf("want a positive number or \"auto\", got %q", s)
	}
	return int64(n), nil
}
