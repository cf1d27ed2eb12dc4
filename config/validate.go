package config

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2/unstable"
	"github.com/stickyd/stickyd/balancer"
	"go.uber.org/zap/zapcore"
)

// Validate checks every value. The error names the key and, when the value
// came from the file, its line. It is the one check of serve, reload and
// check-config: a config it accepts starts (ports and the worker command's
// existence aside, which only the machine can tell).
func (c *Config) Validate() error {
	return c.validate(true)
}

// ValidateRouting is Validate without the worker command: what stickyd
// lookup needs, since a worker's name depends only on its slot.
func (c *Config) ValidateRouting() error {
	return c.validate(false)
}

func (c *Config) validate(withCommand bool) error {
	checks := []func() error{c.checkScalars, c.checkBackends, func() error { return c.checkWorkers(withCommand) },
		c.checkHealth, c.checkDNS}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) checkScalars() error {
	if err := checkHostPort(c.ListenAddr()); err != nil {
		return c.errorf("listen", "%v", err)
	}
	if !oneOf(c.SendProxy, "", "v1", "v2", "none") {
		return c.errorf("send_proxy", "want v2, v1 or none, got %q", c.SendProxy)
	}
	for i, s := range c.AcceptProxy {
		if _, err := parsePrefix(s); err != nil {
			return c.errorf("accept_proxy", "entry %d: %q is not a CIDR or IP", i, s)
		}
	}
	if c.ClientIPHeader != "" && strings.ContainsAny(c.ClientIPHeader, " :\r\n\t") {
		return c.errorf("client_ip_header", "%q is not an HTTP header name", c.ClientIPHeader)
	}
	if _, err := balancer.ParseKeyMode(c.HashKey); c.HashKey != "" && err != nil {
		return c.errorf("hash_key", "want ip, /N (IPv4 prefix 1..32) or /N,/M (IPv6 prefix 1..128), got %q", c.HashKey)
	}
	if c.BalanceFactor != 0 && c.BalanceFactor <= 1 {
		return c.errorf("balance_factor", "want 0 (off) or a factor > 1, got %v", c.BalanceFactor)
	}
	if c.MaxConnections < 0 {
		return c.errorf("max_connections", "want >= 0, got %d", c.MaxConnections)
	}
	if c.MaxConnectionsPerClient < 0 {
		return c.errorf("max_connections_per_client", "want >= 0 (0: no limit), got %d", c.MaxConnectionsPerClient)
	}
	if c.MaxConnectionRatePerClient < 0 {
		return c.errorf("max_connection_rate_per_client", "want >= 0 (0: no limit), got %d", c.MaxConnectionRatePerClient)
	}
	if c.LogLevel != "" {
		if _, err := zapcore.ParseLevel(c.LogLevel); err != nil {
			return c.errorf("log_level", "want debug, info, warn or error, got %q", c.LogLevel)
		}
	}
	if c.LogRateLimit < 0 || c.LogRateLimit >= 1<<24 {
		return c.errorf("log_rate_limit", "want 1 to 16777215 lines a second (0: the default 10), got %d", c.LogRateLimit)
	}
	if !oneOf(c.LogFormat, "", "console", "json") {
		return c.errorf("log_format", "want console or json, got %q", c.LogFormat)
	}
	if c.AccessLog != "" && c.AccessLog != "off" && c.AccessLog != "stderr" && c.AccessLog != "stdout" &&
		(strings.HasSuffix(c.AccessLog, "/") || strings.ContainsRune(c.AccessLog, 0)) {
		return c.errorf("access_log", "want off, stderr, stdout or a file's path, got %q", c.AccessLog)
	}
	if !oneOf(c.Engine, "", "epoll", "goroutine") {
		return c.errorf("engine", "want epoll or goroutine, got %q", c.Engine)
	}
	return c.checkAdmin()
}

// checkAdmin checks admin and admin_socket_mode.
func (c *Config) checkAdmin() error {
	if path, ok := strings.CutPrefix(c.Admin, "unix:"); ok && path == "" {
		return c.errorf("admin", "empty unix socket path")
	} else if c.Admin != "" && !ok {
		if err := checkHostPort(c.Admin); err != nil {
			return c.errorf("admin", "%v (or unix:/path)", err)
		}
	}
	if m, err := strconv.ParseUint(c.AdminSocketMode, 8, 32); c.AdminSocketMode != "" && (err != nil || m > 0o777) {
		return c.errorf("admin_socket_mode", "want an octal permission such as 0600 or 0660, got %q", c.AdminSocketMode)
	}
	return nil
}

func (c *Config) checkBackends() error {
	if len(c.Backends) == 0 && c.Workers == nil {
		return c.errorf("backend", "no backends: give [[backend]] tables, --backend, or [workers]")
	}
	seen := make(map[string]int)
	seenDNS := make(map[string]int)
	if n := len(c.Backends); n > balancer.MaxBackends {
		return c.errorf("backend", "%d backends, at most %d", n, balancer.MaxBackends)
	}
	for i, b := range c.Backends {
		key := "backend[" + strconv.Itoa(i) + "]"
		if err := c.checkWeight(key+".weight", b.Weight); err != nil {
			return err
		}
		if b.DNS != "" {
			if j, dup := seenDNS[b.DNS]; dup {
				return c.errorf(key+".dns", "duplicate dns backend %q (also backend[%d])", b.DNS, j)
			}
			seenDNS[b.DNS] = i
			if err := c.checkDNSBackend(key, b); err != nil {
				return err
			}
			continue
		}
		if err := checkBackendAddress(b.Address); err != nil {
			return c.errorf(key+".address", "%v", err)
		}
		name := b.BackendName()
		if j, dup := seen[name]; dup {
			return c.errorf(key+".name", "duplicate backend name %q (also backend[%d])", name, j)
		}
		seen[name] = i
	}
	return nil
}

// checkWeight checks a backend's weight: 1..balancer.MaxWeight; a weight
// left out is 1, and a weight of 0 written in the file is an error (a
// backend that should get no clients is drained, not weighted 0).
func (c *Config) checkWeight(key string, w int) error {
	_, written := c.lines[key]
	if w < 0 || w > balancer.MaxWeight || (w == 0 && written) {
		return c.errorf(key, "want 1..%d (leave it out for 1; to send a backend no new clients, drain it), got %d",
			balancer.MaxWeight, w)
	}
	return nil
}

// checkDNSBackend checks a [[backend]] table with a dns key.
func (c *Config) checkDNSBackend(key string, b Backend) error {
	switch {
	case b.Address != "":
		return c.errorf(key+".dns", "give address or dns, not both")
	case b.Name != "":
		return c.errorf(key+".name", "a dns backend has no name: each address it resolves to is named by its ip:port")
	}
	if strings.HasPrefix(b.DNS, "_") {
		if strings.ContainsAny(b.DNS, ": /") || !strings.Contains(b.DNS, ".") {
			return c.errorf(key+".dns", "want an SRV name _service._proto.name (no port), got %q", b.DNS)
		}
		return nil
	}
	host, _, err := net.SplitHostPort(b.DNS)
	if err != nil || host == "" || checkHostPort(b.DNS) != nil {
		return c.errorf(key+".dns", "want host:port or _service._proto.name, got %q", b.DNS)
	}
	return nil
}

func (c *Config) checkHealth() error {
	h := c.Health
	if !oneOf(h.Check, "", "none", "tcp", "http") {
		return c.errorf("health.check", "want tcp, http or none, got %q", h.Check)
	}
	if h.Interval.Duration != 0 && h.Interval.Duration < 10*time.Millisecond {
		return c.errorf("health.interval", "want at least 10ms, got %v", h.Interval.Duration)
	}
	interval := c.HealthInterval()
	if h.Timeout.Duration > interval {
		return c.errorf("health.timeout", "%v is longer than health.interval %v", h.Timeout.Duration, interval)
	}
	counts := []struct {
		key string
		n   int
	}{{"health.rise", h.Rise}, {"health.fall", h.Fall}, {"health.eject_after", h.EjectAfter},
		{"health.eject_after_closes", h.EjectAfterCloses}}
	for _, kn := range counts {
		if kn.n < 0 || kn.n > 1000 {
			return c.errorf(kn.key, "want 1..1000, got %d", kn.n)
		}
	}
	if h.Path != "" && (!strings.HasPrefix(h.Path, "/") || strings.ContainsAny(h.Path, " \r\n\t")) {
		return c.errorf("health.path", "want an absolute request path such as /healthz, got %q", h.Path)
	}
	if h.ExpectStatus != 0 && (h.ExpectStatus < 100 || h.ExpectStatus > 599) {
		return c.errorf("health.expect_status", "want an HTTP status 100..599, got %d", h.ExpectStatus)
	}
	if !oneOf(h.SendProxy, "", "v1", "v2", "none") {
		return c.errorf("health.send_proxy", "want v2, v1 or none, got %q", h.SendProxy)
	}
	return nil
}

func (c *Config) checkDNS() error {
	if c.DNSServer != "" {
		if err := checkHostPort(c.DNSServer); err != nil {
			return c.errorf("dns_server", "%v", err)
		}
	}
	if d := c.DNSInterval.Duration; d != 0 && d < 100*time.Millisecond {
		return c.errorf("dns_interval", "want at least 100ms, got %v", d)
	}
	return nil
}

func (c *Config) checkWorkers(withCommand bool) error {
	w := c.Workers
	if w == nil {
		return nil
	}
	if withCommand && (len(w.Command) == 0 || w.Command[0] == "") {
		return c.errorf("workers.command", "want the worker's argv, e.g. [\"node\", \"app.js\"]")
	}
	switch v := w.Count.(type) {
	case nil:
	case string:
		if v != "auto" {
			return c.errorf("workers.count", "want a number or \"auto\", got %q", v)
		}
	case int64:
		if v < 1 || v > 1024 {
			return c.errorf("workers.count", "want 1..1024, got %d", v)
		}
	default:
		return c.errorf("workers.count", "want a number or \"auto\", got %v", v)
	}
	if w.PortBase != 0 && w.SocketDir != "" {
		return c.errorf("workers.socket_dir", "give port_base or socket_dir, not both")
	}
	if w.Output != "" && w.Output != "log" && w.Output != "inherit" {
		return c.errorf("workers.output", "want \"log\" (each line in stickyd's log with worker=<i>) or \"inherit\" (stickyd's stdout and stderr, unchanged), got %q", w.Output)
	}
	if w.IPC != "" && w.IPC != "node" && w.IPC != "none" {
		return c.errorf("workers.ipc", "want \"node\" (a Node IPC channel per worker, for @socket.io/cluster-adapter) or \"none\", got %q", w.IPC)
	}
	if w.MaxMemory != 0 && w.MaxMemory < minMaxMemory {
		return c.errorf("workers.max_memory", "want at least 32MiB (a Node worker alone takes about 40MiB), or 0 for no limit; got %d bytes", w.MaxMemory)
	}
	if w.PortBase < 0 || w.PortBase+w.WorkerCount()-1 > 65535 {
		return c.errorf("workers.port_base", "want 1..65535 for the first worker's port (0 or unset: free ports chosen at start), and room for %d workers; got %d",
			w.WorkerCount(), w.PortBase)
	}
	return nil
}

// BackendName is the backend's name, defaulting to its address.
func (b Backend) BackendName() string {
	if b.Name == "" {
		return b.Address
	}
	return b.Name
}

// BackendWeight is the backend's weight, default 1.
func (b Backend) BackendWeight() int {
	if b.Weight == 0 {
		return 1
	}
	return b.Weight
}

// errorf builds a validation error naming key and, if known, its line.
func (c *Config) errorf(key, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if line, ok := c.lines[key]; ok {
		return fmt.Errorf("%w: line %d: key %q: %s", ErrInvalid, line, key, msg)
	}
	if base, _, found := strings.Cut(key, "["); found {
		if line, ok := c.lines[base]; ok {
			return fmt.Errorf("%w: line %d: key %q: %s", ErrInvalid, line, key, msg)
		}
	}
	return fmt.Errorf("%w: %s (flag --%s): %s", ErrInvalid, key, flagOf(key), msg)
}

// flagOf names the flag twin of key: send_proxy is --send-proxy,
// health.rise is --health-rise, backend[2].address is --backend.
func flagOf(key string) string {
	if s, ok := byKey[key]; ok {
		return s.Flag()
	}
	if i := strings.IndexAny(key, "[."); i >= 0 {
		key = key[:i]
	}
	if s, ok := byKey[key]; ok {
		return s.Flag()
	}
	return strings.ReplaceAll(key, "_", "-")
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port, got %q", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("bad port in %q", s)
	}
	return nil
}

func checkBackendAddress(s string) error {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return fmt.Errorf("empty unix socket path")
		}
		return nil
	}
	return checkHostPort(s)
}

func oneOf(s string, options ...string) bool {
	for _, o := range options {
		if s == o {
			return true
		}
	}
	return false
}

// keyLines maps each key path in a TOML document to its line: "listen",
// "backend[1]", "backend[1].address", "workers.count". It is linear in the
// size of the document: a key's line comes from a binary search over the
// offsets of the newlines, found once (the parser's own Shape rescans the
// document from its start for every call).
func keyLines(src []byte) map[string]int {
	lines := make(map[string]int)
	counts := make(map[string]int)
	nl := newlineOffsets(src)
	var p unstable.Parser
	p.Reset(src)
	table := ""
	for p.NextExpression() {
		e := p.Expression()
		name, line := keyOf(e, nl)
		switch e.Kind {
		case unstable.Table:
			table = name
			lines[table] = line
		case unstable.ArrayTable:
			table = name + "[" + strconv.Itoa(counts[name]) + "]"
			counts[name]++
			lines[table] = line
			if _, ok := lines[name]; !ok {
				lines[name] = line
			}
		case unstable.KeyValue:
			full := name
			if table != "" {
				full = table + "." + name
			}
			lines[full] = line
		}
	}
	return lines
}

// newlineOffsets lists the offset of every '\n' in src, in order.
func newlineOffsets(src []byte) []int {
	var out []int
	for i, b := range src {
		if b == '\n' {
			out = append(out, i)
		}
	}
	return out
}

// keyOf returns e's dotted key and the line (1-based) where it starts; nl
// are the document's newline offsets.
func keyOf(e *unstable.Node, nl []int) (string, int) {
	var parts []string
	line := 0
	for it := e.Key(); it.Next(); {
		n := it.Node()
		if line == 0 {
			line = sort.SearchInts(nl, int(n.Raw.Offset)) + 1
		}
		parts = append(parts, string(n.Data))
	}
	return strings.Join(parts, "."), line
}

// minMaxMemory is the least workers.max_memory: below it every worker
// would be over the limit from its start.
const minMaxMemory = 32 << 20
