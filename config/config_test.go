package config

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func load(t *testing.T, src string) (*Config, error) {
	t.Helper()
	cfg, err := Load(strings.NewReader(src))
	if err != nil {
		return nil, err
	}
	return cfg, cfg.Validate()
}

func TestRepoConfigIsValid(t *testing.T) {
	f, err := os.Open("../config.toml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Workers == nil || cfg.ListenAddr() != "0.0.0.0:3000" {
		t.Errorf("repo config should launch workers on :3000: %+v", cfg)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := load(t, "[[backend]]\naddress = \"127.0.0.1:1\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenAddr() != ":3000" || cfg.ProxyVersion() != 2 || cfg.HeaderTimeout() != 5*time.Second ||
		cfg.DialTimeout() != 5*time.Second || cfg.Drain() != 30*time.Second || cfg.Idle() != 0 {
		t.Errorf("defaults: %+v", cfg)
	}
	if cfg.Backends[0].BackendName() != "127.0.0.1:1" || cfg.Backends[0].BackendWeight() != 1 {
		t.Errorf("backend defaults: %+v", cfg.Backends[0])
	}
	if cfg.SendProxy != "" {
		t.Error("defaults must not be written back")
	}
}

func TestErrorsNameKeyAndLine(t *testing.T) {
	tests := []invalidCase{
		{"unknown key", "listen = \":1\"\nbogus = 1\n", []string{"line 2", "bogus"}},
		{"wrong type", "listen = 3\n", []string{"line 1", "listen"}},
		{"bad send_proxy", "listen = \":1\"\n\nsend_proxy = \"v3\"\n[[backend]]\naddress = \"a:1\"\n", []string{"line 3", "send_proxy", "v3"}},
		{"bad duration", "proxy_header_timeout = \"5 parsecs\"\n", []string{"line 1", "proxy_header_timeout"}},
		{"bad cidr", "accept_proxy = [\"10.0.0.0/8\", \"nope\"]\n[[backend]]\naddress = \"a:1\"\n", []string{"line 1", "accept_proxy", "nope"}},
		{"duplicate name", "[[backend]]\nname = \"a\"\naddress = \"h:1\"\n[[backend]]\nname = \"a\"\naddress = \"h:2\"\n", []string{"line 5", "backend[1].name", "duplicate"}},
		{"bad address", "[[backend]]\naddress = \"nohost\"\n", []string{"line 2", "backend[0].address"}},
		{"no backends", "listen = \":1\"\n", []string{"backend"}},
		{"bad count", "[workers]\ncommand = [\"x\"]\ncount = \"many\"\n", []string{"line 3", "workers.count"}},
		{"no command", "[workers]\ncount = 2\n", []string{"workers.command"}},
		{"syntax", "listen = \"unterminated\n", []string{"line 1"}},
		{"unknown worker key", "[workers]\ncommand = [\"x\"]\ncolor = \"red\"\n", []string{"line 3", "color"}},
		{"typo", "listen = \":1\"\nsend_proxi = \"v2\"\n", []string{"line 2", "send_proxi", `did you mean "send_proxy"?`}},
		{"flag spelling", "send-proxy = \"v2\"\n", []string{"line 1", `did you mean "send_proxy"?`}},
		{"typo in workers", "[workers]\ncommand = [\"x\"]\ncuont = 2\n", []string{"line 3", `did you mean "workers.count"?`}},
		{"typo in backend", "[[backend]]\nadress = \"a:1\"\n", []string{"line 2", `did you mean "backend.address"?`}},
		{"top-level key under workers", "[workers]\ncommand = [\"x\"]\nlisten = \":1\"\n", []string{"line 3", "workers.listen", `"listen" is a top-level key: move it above the first [table] header`}},
		{"table typo", "[[backends]]\naddress = \"a:1\"\n", []string{"line 1", `did you mean "backend"?`}},
		{"workers key at the top level", "listen = \":1\"\ncount = 2\n", []string{"line 2", `"count" is a key of [workers]: move it under that header`}},
		{"bad hash_key", "listen = \":1\"\nhash_key = \"bogus\"\n[[backend]]\naddress = \"a:1\"\n", []string{"line 2", "hash_key", "bogus"}},
		{"hash_key /33", "hash_key = \"/33\"\n[[backend]]\naddress = \"a:1\"\n", []string{"line 1", "hash_key", "/33"}},
		{"huge weight", "[[backend]]\naddress = \"a:1\"\n\nweight = 100000000\n", []string{"line 4", "backend[0].weight", "1..65535"}},
		{"zero weight", "[[backend]]\naddress = \"a:1\"\nweight = 0\n", []string{"line 3", "backend[0].weight", "got 0"}},
		{"negative weight", "[[backend]]\naddress = \"a:1\"\nweight = -2\n", []string{"line 3", "backend[0].weight", "1..65535"}},
		{"dns weight", "[[backend]]\ndns = \"a:1\"\nweight = 70000\n", []string{"line 3", "backend[0].weight"}},
		{"port_base and socket_dir", "[workers]\ncommand = [\"x\"]\nport_base = 4000\nsocket_dir = \"/tmp/s\"\n", []string{"line 4", "workers.socket_dir", "not both"}},
		{"negative port_base", "[workers]\ncommand = [\"x\"]\nport_base = -1\n", []string{"line 3", "workers.port_base"}},
	}
	checkInvalid(t, tests)
}

// invalidCase is a config that must fail to load with an error that wraps
// ErrInvalid and mentions every string in want.
type invalidCase struct {
	name, src string
	want      []string
}

func checkInvalid(t *testing.T, tests []invalidCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.src)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestWorkerCount(t *testing.T) {
	cfg, err := load(t, "[workers]\ncommand = [\"x\"]\ncount = 3\n")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Workers.WorkerCount() != 3 {
		t.Errorf("count = %d", cfg.Workers.WorkerCount())
	}
}

func TestParseBackendFlag(t *testing.T) {
	b, err := ParseBackendFlag("web=127.0.0.1:80")
	if err != nil || b.Name != "web" || b.Address != "127.0.0.1:80" {
		t.Errorf("%+v %v", b, err)
	}
	b, err = ParseBackendFlag("127.0.0.1:80")
	if err != nil || b.Name != "127.0.0.1:80" {
		t.Errorf("%+v %v", b, err)
	}
	if _, err := ParseBackendFlag("x="); err == nil {
		t.Error("empty address accepted")
	}
}

// FuzzLoad: no input makes Load or Validate panic, and every error wraps
// ErrInvalid.
func FuzzLoad(f *testing.F) {
	f.Add("listen = \":1\"\n[[backend]]\nname = \"a\"\naddress = \"h:1\"\nweight = 2\n")
	f.Add("[workers]\ncommand = [\"x\"]\ncount = \"auto\"\n[workers.env]\nA = \"b\"\n")
	f.Add("accept_proxy = [\"::ffff:10.0.0.0/104\"]\nidle_timeout = \"1h\"\n")
	f.Fuzz(func(t *testing.T, src string) {
		cfg, err := Load(strings.NewReader(src))
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error %v does not wrap ErrInvalid", err)
		}
	})
}

// keyHint names the key a typo was meant to be, or the table a key
// belongs to, and says nothing for a known key or one far from any.
func TestKeyHint(t *testing.T) {
	for _, tc := range []struct {
		path []string
		want string
	}{
		{[]string{"send_proxi"}, `did you mean "send_proxy"?`},
		{[]string{"acept_proxy"}, `did you mean "accept_proxy"?`},
		{[]string{"health", "intreval"}, `did you mean "health.interval"?`},
		{[]string{"backend", "dsn"}, `did you mean "backend.dns"?`},
		{[]string{"backend", "listen"}, `"listen" is a top-level key: move it above the first [table] header (TOML puts a key in the last table opened above it)`},
		{[]string{"health", "command"}, `"command" is a key of [workers]: move it under that header`},
		{[]string{"rise"}, `"rise" is a key of [health]: move it under that header`},
		{[]string{"send_proxy"}, ""},               // known
		{[]string{"bogus"}, ""},                    // far from every key
		{[]string{"workers", "color"}, ""},         // count is three edits away
		{[]string{"workers", "env", "X"}, ""},      // a map takes any key
		{[]string{"workers", "env", "0", "0"}, ""}, // below a map
		{[]string{"listen", "x"}, ""},              // below a value
		{[]string{"nosuch", "listen"}, ""},         // no such table
		{nil, ""},
	} {
		if got := keyHint(tc.path); got != tc.want {
			t.Errorf("keyHint(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"", "abc", 3}, {"count", "count", 0}, {"cuont", "count", 1},
		{"adress", "address", 1}, {"send-proxy", "send_proxy", 1}, {"color", "count", 3}, {"ab", "ba", 1},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// A STICKYD_ variable that stickyd does not read is reported, with the
// twin it was probably meant to be; twins, --config's, the token and what
// stickyd sets itself (workers, upgrades) are not, nor other variables.
func TestUnknownEnvs(t *testing.T) {
	got := UnknownEnvs([]string{
		"STICKYD_SEND_PROXI=v1", "STICKYD_SEND_PROXY=v2", "STICKYD_CONFIG=/etc/s.toml", "STICKYD_ADMIN_TOKEN=x",
		"STICKYD_WORKER_ID=0", "STICKYD_WORKERS=2", "STICKYD_LISTEN_FD=3", "STICKYD_READY_FD=4", "PATH=/bin",
		"STICKYD_HEALTH_CHEK=tcp", "STICKYD_BOGUS=1", "STICKYD_ACCEPT_PROXY=10.0.0.0/8", "STICKYD_LISTN=:1",
	})
	want := []UnknownEnv{
		{"STICKYD_SEND_PROXI", "STICKYD_SEND_PROXY"},
		{"STICKYD_HEALTH_CHEK", "STICKYD_HEALTH_CHECK"},
		{"STICKYD_BOGUS", ""},
		{"STICKYD_LISTN", "STICKYD_LISTEN"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("UnknownEnvs = %+v, want %+v", got, want)
	}
}

// max_memory takes a size with its unit, and refuses what is not one or
// is too small to run any worker.
func TestWorkersMaxMemory(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want int64
		err  string
	}{
		{`"512MiB"`, 512 << 20, ""},
		{`"1.5GiB"`, 3 << 29, ""},
		{`"600MB"`, 600e6, ""},
		{`"512mib"`, 512 << 20, ""},
		{`"512Mi"`, 512 << 20, ""},
		{`".5GiB"`, 512 << 20, ""},
		{`"512 MiB"`, 512 << 20, ""},
		{`"512M"`, 0, `"512M" is ambiguous: write 512MiB (powers of 1024) or 512MB (powers of 1000)`},
		{`"0.5B"`, 0, "less than a byte"},
		{`"-5MiB"`, 0, `want a size such as`},
		{`"0"`, 0, ""},
		{`"12MiB"`, 0, "want at least 32MiB"},
		{`"lots"`, 0, `want a size such as "512MiB"`},
		{`"5 parsecs"`, 0, `want a size such as "512MiB"`},
		{`512`, 0, "workers.max_memory"},
	} {
		src := "[workers]\ncommand = [\"x\"]\nmax_memory = " + tc.v + "\n"
		cfg, err := Load(strings.NewReader(src))
		if err == nil {
			err = cfg.Validate()
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("max_memory = %s: %v", tc.v, err)
		case tc.err == "" && int64(cfg.Workers.MaxMemory) != tc.want:
			t.Errorf("max_memory = %s: %d bytes, want %d", tc.v, cfg.Workers.MaxMemory, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "line 3")):
			t.Errorf("max_memory = %s: error %v, want one with %q on line 3", tc.v, err, tc.err)
		}
	}
}

// workers.ipc is "node" or "none"; anything else is an error naming the key
// and its line.
func TestWorkersIPC(t *testing.T) {
	for _, tc := range []struct{ v, err string }{
		{`"node"`, ""}, {`"none"`, ""}, {`"cluster"`, `want "node"`}, {`"Node"`, `want "node"`},
	} {
		cfg, err := Load(strings.NewReader("[workers]\ncommand = [\"x\"]\nipc = " + tc.v + "\n"))
		if err == nil {
			err = cfg.Validate()
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ipc = %s: %v", tc.v, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "line 3")):
			t.Errorf("ipc = %s: error %v, want one with %q on line 3", tc.v, err, tc.err)
		}
	}
}
