package integration_test

// The admin API and metrics end to end.

import (
	"strings"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

func TestAdminEndToEnd(t *testing.T) {
	_, args := fourBackends(t)
	adm := testkit.FreePort(t)
	p := startStickyd(t, append(args, "--admin", adm)...)
	if code, body := opsDo(t, "GET", adm, "/healthz"); code != 200 || !strings.Contains(body, "4 of 4") {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	ip := opsHomeIP(t, adm, "b1", 0)
	c := testkit.Dial(t, ip, p.addr)
	defer c.Close()
	name, _, br := testkit.Greeting(t, c)
	if name != "b1" {
		t.Fatalf("lookup said b1, connection went to %s", name)
	}
	opsEcho(t, c, br, "before drain")
	if got := opsBackends(t, adm)["b1"]; got.Active != 1 || got.Total != 1 || got.Weight != 1 {
		t.Errorf("/backends b1: %+v", got)
	}
	if v := opsMetric(t, adm, `stickyd_backend_connections_active{backend="b1"}`); v != 1 {
		t.Errorf("active metric %v", v)
	}

	if code, body := opsDo(t, "POST", adm, "/backends/b1/drain"); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	if r := opsLookup(t, adm, ip); r.Home != "b1" || r.Backend == "b1" || r.Backend == "" {
		t.Errorf("/lookup while draining: %+v", r)
	}
	if name, _, err := hello(ip, p.addr); err != nil || name == "b1" {
		t.Errorf("new connection while b1 drains: %q %v", name, err)
	}
	opsEcho(t, c, br, "while draining") // the open connection finishes undisturbed
	if code, _ := opsDo(t, "POST", adm, "/backends/b1/enable"); code != 200 {
		t.Fatal("enable")
	}
	if name, _, err := hello(ip, p.addr); err != nil || name != "b1" {
		t.Errorf("after enable: %q %v", name, err)
	}
	c.Close()
	testkit.WaitFor(t, "b1 idle", func() bool { return opsBackends(t, adm)["b1"].Active == 0 })
	if v := opsMetric(t, adm, `stickyd_bytes_total{direction="in"}`); v < float64(len("before drain\nwhile draining\n")) {
		t.Errorf("bytes in = %v", v)
	}

	for _, n := range []string{"b0", "b1", "b2", "b3"} {
		opsDo(t, "POST", adm, "/backends/"+n+"/drain")
	}
	if code, _ := opsDo(t, "GET", adm, "/healthz"); code != 503 {
		t.Errorf("/healthz with every backend draining: %d", code)
	}
	if _, _, err := hello(ip, p.addr); err == nil {
		t.Error("a client was served with every backend draining")
	}
	testkit.WaitFor(t, "the refusal counted", func() bool {
		return opsMetric(t, adm, `stickyd_connections_rejected_total{reason="no_backend"}`) >= 1
	})
	if code, _ := opsDo(t, "POST", adm, "/backends/nope/drain"); code != 404 {
		t.Errorf("drain of an unknown backend: %d", code)
	}
}
