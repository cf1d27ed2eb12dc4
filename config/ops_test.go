package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHealthKeys(t *testing.T) {
	cfg, err := load(t, `send_proxy = "v1"
[[backend]]
address = "127.0.0.1:1"
[health]
check = "http"
interval = "500ms"
timeout = "200ms"
rise = 1
fall = 2
path = "/healthz"
expect_status = 204
cooldown = "1s"
eject_after = 3
`)
	if err != nil {
		t.Fatal(err)
	}
	h := cfg.Health
	if h.Check != "http" || h.Interval.Duration != 500*time.Millisecond || h.Timeout.Duration != 200*time.Millisecond ||
		h.Rise != 1 || h.Fall != 2 || h.Path != "/healthz" || h.ExpectStatus != 204 ||
		h.Cooldown.Duration != time.Second || h.EjectAfter != 3 {
		t.Errorf("health: %+v", h)
	}
	if cfg.HealthSendProxy() != 1 {
		t.Errorf("health.send_proxy defaults to send_proxy v1, got %d", cfg.HealthSendProxy())
	}
	cfg.Health.SendProxy = "none"
	if cfg.HealthSendProxy() != 0 {
		t.Errorf("health.send_proxy none: %d", cfg.HealthSendProxy())
	}
}

func TestDNSBackendKeys(t *testing.T) {
	cfg, err := load(t, `dns_server = "127.0.0.1:5353"
dns_interval = "2s"
[[backend]]
dns = "app.svc.cluster.local:3000"
weight = 2
[[backend]]
dns = "_http._tcp.app.svc.cluster.local"
[[backend]]
name = "static"
address = "10.0.0.1:80"
`)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.DNSTargets(); !slices.Equal(got, []string{"app.svc.cluster.local:3000", "_http._tcp.app.svc.cluster.local"}) {
		t.Errorf("DNSTargets = %q", got)
	}
	if cfg.DNSRefresh() != 2*time.Second || (&Config{}).DNSRefresh() != 10*time.Second {
		t.Error("dns_interval")
	}
	b, err := ParseBackendFlag("dns:_x._tcp.example.org")
	if err != nil || b.DNS != "_x._tcp.example.org" || b.Name != "" || b.Address != "" {
		t.Errorf("dns flag: %+v %v", b, err)
	}
}

func TestHealthAndDNSErrorsNameKeyAndLine(t *testing.T) {
	const be = "[[backend]]\naddress = \"a:1\"\n"
	tests := []invalidCase{
		{"check", be + "[health]\ncheck = \"icmp\"\n", []string{"line 4", "health.check", "icmp"}},
		{"timeout over interval", be + "[health]\ninterval = \"1s\"\ntimeout = \"2s\"\n", []string{"line 5", "health.timeout"}},
		{"timeout over default interval", be + "[health]\ntimeout = \"3s\"\n", []string{"line 4", "health.timeout"}},
		{"interval too short", be + "[health]\ninterval = \"1ms\"\n", []string{"line 4", "health.interval"}},
		{"negative rise", be + "[health]\nrise = -1\n", []string{"line 4", "health.rise"}},
		{"fall", be + "[health]\nfall = 5000\n", []string{"line 4", "health.fall"}},
		{"path", be + "[health]\npath = \"healthz\"\n", []string{"line 4", "health.path"}},
		{"status", be + "[health]\nexpect_status = 42\n", []string{"line 4", "health.expect_status"}},
		{"health send_proxy", be + "[health]\nsend_proxy = \"v3\"\n", []string{"line 4", "health.send_proxy"}},
		{"eject_after", be + "[health]\neject_after = -2\n", []string{"line 4", "health.eject_after"}},
		{"unknown health key", be + "[health]\nchek = \"tcp\"\n", []string{"line 4", "chek"}},
		{"dns no port", "[[backend]]\ndns = \"app.local\"\n", []string{"line 2", "backend[0].dns"}},
		{"dns and address", "[[backend]]\ndns = \"app.local:80\"\naddress = \"a:1\"\n", []string{"line 2", "backend[0].dns", "not both"}},
		{"dns with name", "[[backend]]\nname = \"x\"\ndns = \"app.local:80\"\n", []string{"line 2", "backend[0].name"}},
		{"srv with port", "[[backend]]\ndns = \"_http._tcp.app:80\"\n", []string{"line 2", "backend[0].dns", "SRV"}},
		{"dns duplicate", "[[backend]]\ndns = \"a.b:1\"\n[[backend]]\ndns = \"a.b:1\"\n", []string{"line 4", "backend[1].dns", "duplicate"}},
		{"dns_server", be + "dns_server = \"localhost\"\n", []string{"dns_server"}},
		{"dns_interval", "dns_interval = \"1ms\"\n" + be, []string{"line 1", "dns_interval"}},
		{"pid_file type", "pid_file = 3\n" + be, []string{"line 1", "pid_file"}},
	}
	checkInvalid(t, tests)
}

// Values set by flags (no line) name the flag twin.
func TestHealthFlagErrorsNameFlag(t *testing.T) {
	cfg := &Config{Backends: []Backend{{Address: "a:1"}}}
	cfg.Health.Rise = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--health-rise") {
		t.Errorf("error %v does not name --health-rise", err)
	}
	cfg = &Config{Backends: []Backend{{Address: "a:1"}}, DNSServer: "nope"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--dns-server") {
		t.Errorf("error %v does not name --dns-server", err)
	}
}

func TestReloadChangedKeys(t *testing.T) {
	a, err := load(t, "listen = \":1\"\n[[backend]]\naddress = \"a:1\"\n[health]\nrise = 2\n")
	if err != nil {
		t.Fatal(err)
	}
	b, err := load(t, "listen = \":2\"\n[[backend]]\naddress = \"a:1\"\nweight = 3\n[health]\nrise = 2\nfall = 4\n[workers]\ncommand = [\"x\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	got := ChangedKeys(a, b)
	want := []string{"backend", "health.fall", "listen", "workers"}
	if !slices.Equal(got, want) {
		t.Errorf("ChangedKeys = %q, want %q", got, want)
	}
	if got := ChangedKeys(a, a); len(got) != 0 {
		t.Errorf("ChangedKeys(a, a) = %q", got)
	}
}
