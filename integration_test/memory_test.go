package integration_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/internal/testkit"
)

// TestWorkerMaxMemoryNodeApp: two Node workers under max_memory = 150MiB
// while 4 clients connect without pause from 40 addresses. One worker
// leaks 200 MiB: within two readings (5 s apart) stickyd replaces it as a
// rolling restart would, beside itself, and it drains. No request fails
// or reaches another slot, a request in flight on the leaking worker
// completes, the other worker is untouched, and the metrics say so.
func TestWorkerMaxMemoryNodeApp(t *testing.T) {
	const n = 2
	base := testkit.FreePortBase(t, 2*n, workerPortsLo, workerPortsHi)
	cfg, _ := rollingAppAs(t, rollingAppSetup{n: n, base: base, workers: "max_memory = \"150MiB\"\n"})
	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	p := launch(t, t.TempDir(), addr, "--listen", addr, "--log-format", "json", "--config", cfg, "--admin", adm)
	pids := waitWorkersReady(t, p, n)
	ips := testkit.ClientIPs(40)
	homes := lookupHomes(t, cfg, n, ips)
	var leaker string // an IP whose home is worker-0
	for _, ip := range ips {
		if homes[ip] == "worker-0" {
			leaker = ip
			break
		}
	}
	memory := func(slot int) float64 {
		return opsMetric(t, adm, fmt.Sprintf(`stickyd_worker_memory_bytes{worker="worker-%d"}`, slot))
	}
	testkit.WaitFor(t, "a first reading of both workers", func() bool { return memory(0) > 0 && memory(1) > 0 })
	if m := memory(0); m > 150<<20 {
		t.Fatalf("worker-0 reads %.0f bytes before it leaks", m)
	}

	load := startRollingLoad(addr, ips, 4)
	// In flight at the replacement (5-10 s on), done within stop_timeout (5 s) of its SIGTERM.
	slow := slowGet(leaker, addr, "/slow?ms=9000", answeredBy("", pids[0]))
	if a, err := rollingGet(leaker, addr, "/grow?mb=200"); err != nil || a.pid != pids[0] {
		t.Fatalf("/grow: %+v %v", a, err)
	}
	testkit.WaitFor(t, "worker-0 replaced for its memory", func() bool {
		return opsMetric(t, adm, `stickyd_worker_memory_replacements_total{worker="worker-0"}`) == 1
	})
	if err := testkit.Await(t, slow, "the slow request did not end"); err != nil {
		t.Errorf("a request in flight on the leaking worker: %v", err)
	}
	got, errs := load.take()
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed, first: %s", len(errs), len(got)+len(errs), errs[0])
	}
	for _, a := range got {
		if "worker-"+strconv.Itoa(a.slot) != homes[a.client] {
			t.Fatalf("%s answered by worker %d, its home is %s", a.client, a.slot, homes[a.client])
		}
	}
	t.Logf("%d requests during the leak and the replacement, none failed or moved", len(got))
	testkit.WaitFor(t, "the leaking worker gone", func() bool { return procGone(pids[0]) })
	over := logsIn[map[string]any](p.stderr.String(), "worker over max_memory; replacing it")
	if len(over) != 1 || over[0]["worker"] != 0.0 || over[0]["rss"].(float64) <= 150<<20 {
		t.Errorf("the over-limit line: %v", over)
	}
	testkit.WaitFor(t, "the new worker-0 read", func() bool { m := memory(0); return m > 0 && m < 150<<20 })
	if a, err := rollingGet(leaker, addr, "/"); err != nil || a.slot != 0 || a.pid == pids[0] {
		t.Errorf("after the replacement, %s got %+v %v; want worker 0's new process", leaker, a, err)
	}
	status, body := opsDo(t, "GET", adm, "/workers")
	var workers []admin.WorkerInfo
	if err := json.Unmarshal([]byte(body), &workers); err != nil || status != http.StatusOK || len(workers) != n {
		t.Fatalf("GET /workers: %d %q %v", status, body, err)
	}
	if w := workers[0]; w.Name != "worker-0" || !w.Ready || w.Pid == pids[0] || w.MemoryReplacements != 1 ||
		w.MemoryBytes <= 0 || w.MemoryBytes > 150<<20 || w.UptimeSeconds <= 0 || w.Restarts != 0 {
		t.Errorf("GET /workers, worker-0: %+v; want ready on a new pid, replaced once for its memory, under the limit", w)
	}
	if w := workers[1]; w.Pid != pids[1] || w.MemoryReplacements != 0 || w.Replacements != 0 {
		t.Errorf("GET /workers, worker-1: %+v; want pid %d, untouched", w, pids[1])
	}
	if v := opsMetric(t, adm, `stickyd_worker_memory_replacements_total{worker="worker-1"}`); v != 0 {
		t.Errorf("worker-1 replaced %v times", v)
	}
	for _, e := range p.readyWorkers() {
		if *e.Worker == 1 && e.Pid != pids[1] {
			t.Errorf("worker-1 changed pid: %d, was %d", e.Pid, pids[1])
		}
	}
}
