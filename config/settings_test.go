package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// settingCase is one row's test data: a good and a bad value, as TOML
// literals and as flag values. An empty bad means every value of the
// type is accepted.
type settingCase struct {
	good     string // TOML literal
	goodFlag any
	bad      string
	badFlag  any
}

// settingCases has a case for every setting of the table:
// TestSettingsTable fails for a row without one.
var settingCases = map[string]settingCase{
	"listen":                         {`"127.0.0.1:4000"`, "127.0.0.1:4000", `"nope"`, "nope"},
	"backend":                        {`"127.0.0.1:2"`, []string{"127.0.0.1:2"}, `"nope"`, []string{"nope"}},
	"send_proxy":                     {`"v1"`, "v1", `"v3"`, "v3"},
	"accept_proxy":                   {`["10.0.0.0/8"]`, []string{"10.0.0.0/8"}, `["x"]`, []string{"x"}},
	"forward_tlvs":                   {`true`, true, ``, nil},
	"client_ip_header":               {`"X-Real-IP"`, "X-Real-IP", `"a b"`, "a b"},
	"ignore_missing_header":          {`true`, true, ``, nil},
	"hash_key":                       {`"/24"`, "/24", `"/99"`, "/99"},
	"balance_factor":                 {`1.5`, 1.5, `0.5`, 0.5},
	"proxy_header_timeout":           {`"7s"`, 7 * time.Second, `"-1s"`, -time.Second},
	"connect_timeout":                {`"7s"`, 7 * time.Second, `"-1s"`, -time.Second},
	"idle_timeout":                   {`"7s"`, 7 * time.Second, `"-1s"`, -time.Second},
	"half_close_timeout":             {`"7s"`, 7 * time.Second, `"-1s"`, -time.Second},
	"first_byte_timeout":             {`"7s"`, 7 * time.Second, `"-1s"`, -time.Second},
	"drain_timeout":                  {`"7s"`, 7 * time.Second, `"-1s"`, -time.Second},
	"max_connections":                {`100`, 100, `-1`, -1},
	"max_connections_per_client":     {`20`, 20, `-1`, -1},
	"max_connection_rate_per_client": {`50`, 50, `-1`, -1},
	"engine":                         {`"goroutine"`, "goroutine", `"x"`, "x"},
	"admin":                          {`"127.0.0.1:9000"`, "127.0.0.1:9000", `"nope"`, "nope"},
	"admin_token_file":               {`"/etc/token"`, "/etc/token", ``, nil},
	"admin_socket_mode":              {`"0660"`, "0660", `"999"`, "999"},
	"workers.count":                  {`3`, "3", `0`, "0"},
	"workers.port_base":              {`7000`, 7000, `-1`, -1},
	"workers.socket_dir":             {`"/tmp/w"`, "/tmp/w", ``, nil},
	"health.check":                   {`"tcp"`, "tcp", `"x"`, "x"},
	"health.interval":                {`"3s"`, 3 * time.Second, `"1ms"`, time.Millisecond},
	"health.timeout":                 {`"1s"`, time.Second, `"5s"`, 5 * time.Second},
	"health.rise":                    {`5`, 5, `-1`, -1},
	"health.fall":                    {`5`, 5, `1001`, 1001},
	"health.path":                    {`"/healthz"`, "/healthz", `"x"`, "x"},
	"health.expect_status":           {`204`, 204, `42`, 42},
	"health.send_proxy":              {`"none"`, "none", `"v3"`, "v3"},
	"health.cooldown":                {`"9s"`, 9 * time.Second, `"-1s"`, -time.Second},
	"health.eject_after":             {`4`, 4, `-1`, -1},
	"health.eject_after_closes":      {`4`, 4, `1001`, 1001},
	"dns_server":                     {`"127.0.0.1:53"`, "127.0.0.1:53", `"nope"`, "nope"},
	"dns_interval":                   {`"30s"`, 30 * time.Second, `"1ms"`, time.Millisecond},
	"pid_file":                       {`"/run/stickyd.pid"`, "/run/stickyd.pid", ``, nil},
	"log_level":                      {`"debug"`, "debug", `"loud"`, "loud"},
	"log_rate_limit":                 {`5`, 5, `-1`, -1},
	"log_format":                     {`"json"`, "json", `"xml"`, "xml"},
	"access_log":                     {`"/var/log/stickyd/access.log"`, "/var/log/stickyd/access.log", `"/var/log/"`, "/var/log/"},
}

// tableless are the config keys with no flag (and so no row): the parts of
// a [[backend]] table, and the [workers] keys only a file can give.
var tableless = map[string]bool{
	"backend.name": true, "backend.address": true, "backend.dns": true, "backend.weight": true,
	"workers.command": true, "workers.env": true, "workers.dir": true,
	"workers.startup_timeout": true, "workers.stop_timeout": true, "workers.max_memory": true, "workers.output": true,
	"workers.ipc": true,
}

// fakeFlags are flags set by name, for ApplyFlags.
type fakeFlags map[string]any

func (f fakeFlags) IsSet(name string) bool             { _, ok := f[name]; return ok }
func (f fakeFlags) String(name string) string          { s, _ := f[name].(string); return s }
func (f fakeFlags) StringSlice(name string) []string   { s, _ := f[name].([]string); return s }
func (f fakeFlags) Bool(name string) bool              { b, _ := f[name].(bool); return b }
func (f fakeFlags) Int(name string) int                { n, _ := f[name].(int); return n }
func (f fakeFlags) Float64(name string) float64        { x, _ := f[name].(float64); return x }
func (f fakeFlags) Duration(name string) time.Duration { d, _ := f[name].(time.Duration); return d }

// docFor is a config file that sets key to the TOML literal v (nothing
// when v is ""), with one backend and, for a [workers] key, workers.
func docFor(key, v string) string {
	table, name, nested := strings.Cut(key, ".")
	var top, backend, sub string
	backend = "[[backend]]\naddress = \"127.0.0.1:1\"\n"
	switch {
	case v == "":
	case key == "backend":
		backend = "[[backend]]\naddress = " + v + "\n"
	case nested:
		sub = name + " = " + v + "\n"
	default:
		top = key + " = " + v + "\n"
	}
	doc := top + backend
	if nested {
		doc += "[" + table + "]\n" + sub
	}
	if table == "workers" {
		doc += "command = [\"x\"]\n"
	}
	return doc
}

// baseFor is docFor(key, "") loaded: the config a flag of key applies to.
func baseFor(t *testing.T, key string) *Config {
	t.Helper()
	cfg, err := Load(strings.NewReader(docFor(key, "")))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// validateBoth runs Validate (serve, reload, check-config) and
// ValidateRouting (lookup) and fails the test unless they agree.
func validateBoth(t *testing.T, what string, cfg *Config) error {
	t.Helper()
	err, routing := cfg.Validate(), cfg.ValidateRouting()
	if (err == nil) != (routing == nil) {
		t.Errorf("%s: Validate %v but ValidateRouting %v", what, err, routing)
	}
	return err
}

// TestSettingsTable walks the table of settings: every row names a field of
// Config of its kind, has a flag and an environment twin of its own, and a
// test case; a good value is accepted from the file and from the flag
// alike, with the same result; a bad one is refused both ways by
// Validate and ValidateRouting, and the error names the key or the flag.
func TestSettingsTable(t *testing.T) {
	flags := map[string]bool{"config": true}
	for _, s := range Settings() {
		tc, ok := settingCases[s.Key]
		if !ok {
			t.Errorf("%s: no test case in settingCases", s.Key)
			continue
		}
		if flags[s.Flag()] {
			t.Errorf("%s: flag --%s twice", s.Key, s.Flag())
		}
		flags[s.Flag()] = true
		if want := "STICKYD_" + strings.ToUpper(strings.ReplaceAll(s.Flag(), "-", "_")); s.Env() != want {
			t.Errorf("%s: env %s, want %s", s.Key, s.Env(), want)
		}
		checkKind(t, s)
		checkGood(t, s, tc)
		checkBad(t, s, tc)
	}
}

// checkKind checks that s names a field of its kind.
func checkKind(t *testing.T, s Setting) {
	t.Helper()
	cfg := &Config{Workers: &Workers{}}
	kinds := map[Kind]reflect.Type{KindString: reflect.TypeFor[string](), KindStrings: reflect.TypeFor[[]string](),
		KindBool: reflect.TypeFor[bool](), KindInt: reflect.TypeFor[int](), KindFloat: reflect.TypeFor[float64](),
		KindDuration: reflect.TypeFor[Duration]()}
	v := cfg.field(s.Key)
	switch {
	case !v.IsValid():
		t.Errorf("%s: no field of Config has this key", s.Key)
	case s.set == nil && v.Type() != kinds[s.Kind]:
		t.Errorf("%s: field is %v, kind %v", s.Key, v.Type(), s.Kind)
	}
}

func checkGood(t *testing.T, s Setting, tc settingCase) {
	t.Helper()
	fromFile, err := Load(strings.NewReader(docFor(s.Key, tc.good)))
	if err != nil {
		t.Fatalf("%s = %s: %v", s.Key, tc.good, err)
	}
	if err := validateBoth(t, s.Key+" = "+tc.good, fromFile); err != nil {
		t.Errorf("%s = %s: %v", s.Key, tc.good, err)
	}
	fromFlag := baseFor(t, s.Key)
	if err := fromFlag.ApplyFlags(fakeFlags{s.Flag(): tc.goodFlag}, nil); err != nil {
		t.Fatalf("--%s %v: %v", s.Flag(), tc.goodFlag, err)
	}
	if err := validateBoth(t, "--"+s.Flag(), fromFlag); err != nil {
		t.Errorf("--%s %v: %v", s.Flag(), tc.goodFlag, err)
	}
	got, want := fromFlag.field(s.Key).Interface(), fromFile.field(s.Key).Interface()
	if s.Key == "backend" {
		got, want = fromFlag.Backends[0].Address, fromFile.Backends[0].Address
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("--%s %v gives %v; %s = %s gives %v", s.Flag(), tc.goodFlag, got, s.Key, tc.good, want)
	}
	if len(ChangedKeys(fromFile, baseFor(t, s.Key))) == 0 {
		t.Errorf("%s = %s: ChangedKeys sees no change", s.Key, tc.good)
	}
}

func checkBad(t *testing.T, s Setting, tc settingCase) {
	t.Helper()
	if tc.bad == "" {
		return
	}
	fromFile, err := Load(strings.NewReader(docFor(s.Key, tc.bad)))
	if err == nil {
		err = validateBoth(t, s.Key+" = "+tc.bad, fromFile)
	}
	leaf := s.Key[strings.LastIndex(s.Key, ".")+1:]
	if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), leaf) {
		t.Errorf("%s = %s: error %v, want one naming %s", s.Key, tc.bad, err, leaf)
	}
	fromFlag := baseFor(t, s.Key)
	err = fromFlag.ApplyFlags(fakeFlags{s.Flag(): tc.badFlag}, nil)
	if err == nil {
		err = validateBoth(t, "--"+s.Flag(), fromFlag)
	}
	if err == nil || !strings.Contains(err.Error(), "--"+s.Flag()) {
		t.Errorf("--%s %v: error %v, want one naming --%s", s.Flag(), tc.badFlag, err, s.Flag())
	}
}

// TestEveryKeyHasARow walks Config's fields: every key is a row of the
// table or one of the few keys only a file can give (tableless).
func TestEveryKeyHasARow(t *testing.T) {
	var walk func(reflect.Type, string)
	walk = func(typ reflect.Type, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if !f.IsExported() || tag == "" {
				continue
			}
			key, ft := prefix+tag, f.Type
			if ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[Duration]() {
				walk(ft, key+".")
				continue
			}
			if _, ok := Lookup(key); !ok && !tableless[key] {
				t.Errorf("config key %s has no row in the settings table", key)
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
}

// A changed key needs a restart unless its row is Live; keys with no row
// (the [workers] table) always do.
func TestRestartKeys(t *testing.T) {
	a := &Config{Listen: ":1", HashKey: "ip", Health: Health{Rise: 2}}
	b := &Config{Listen: ":2", HashKey: "/24", Health: Health{Rise: 3}, Engine: "goroutine",
		Workers: &Workers{Command: []string{"x"}}}
	got := RestartKeys(a, b)
	want := []string{"engine", "listen", "workers"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("RestartKeys = %q, want %q", got, want)
	}
}

// The defaults --help shows are the ones the accessors resolve.
func TestDefaultsFromTable(t *testing.T) {
	var c Config
	checks := map[string]any{
		"listen": c.ListenAddr(), "send_proxy": c.SendProxyName(), "engine": c.EngineName(),
		"proxy_header_timeout": c.HeaderTimeout(), "connect_timeout": c.DialTimeout(), "drain_timeout": c.Drain(),
		"dns_interval": c.DNSRefresh(), "health.interval": c.HealthInterval(), "health.timeout": c.HealthTimeout(),
		"health.rise": c.HealthRise(), "health.fall": c.HealthFall(), "health.path": c.HealthPath(),
		"health.cooldown": c.Cooldown(), "health.eject_after": c.EjectAfter(),
		"health.eject_after_closes": c.EjectAfterCloses(), "log_rate_limit": c.LogBurst(),
		"log_level": c.Level().String(), "hash_key": c.KeyMode().String(),
	}
	for key, got := range checks {
		s, _ := Lookup(key)
		if shown := s.Default; shown != fmt.Sprint(got) {
			t.Errorf("%s: --help shows default %q, the accessor gives %v", key, shown, got)
		}
	}
}
