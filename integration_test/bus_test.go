package integration_test

// The workers' bus: examples/socketio keeps @socket.io/cluster-adapter, as
// under Node's cluster, and stickyd relays its messages between the
// workers, so that io.emit reaches every worker's clients.

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/internal/testkit"
)

// chatSummary is testdata/sio-chat.js's output.
type chatSummary struct {
	Clients, Welcomed, Chats, CensusTries int
	PerWorker                             map[string]int
	Census                                struct {
		Sockets, Servers int
		Error            string
	}
	ChatFrom    string
	ChatWorkers []string
	Missed      []string
	Errors      []string
	Done        string
	Ms          int
}

// chatAcross runs testdata/sio-chat.js: len(ips) socket.io clients, the
// census until it counts every client on `servers` workers, then one chat
// that every client must get.
func chatAcross(t *testing.T, example, url string, ips []string, servers int) chatSummary {
	t.Helper()
	conf, _ := json.Marshal(map[string]any{"url": url, "ips": ips, "exampleDir": example, "servers": servers,
		"deadlineMs": (30 * time.Second).Milliseconds()})
	cmd := exec.Command("node", "testdata/sio-chat.js", string(conf))
	stderr := &testkit.SyncBuffer{}
	cmd.Stderr = stderr
	out, err := cmd.Output()
	var s chatSummary
	if jerr := json.Unmarshal(out, &s); jerr != nil {
		t.Fatalf("sio-chat.js: %v, %v; output %q, stderr %s", err, jerr, out, stderr.String())
	}
	if err != nil {
		t.Fatalf("sio-chat.js: %v: %+v; stderr %s", err, s, stderr.String())
	}
	return s
}

func TestSocketIOClusterAdapterAcrossWorkers(t *testing.T) {
	example := socketIOExample(t)
	npmExample(t, "socketio", "@socket.io/cluster-adapter")
	const workers, clients = 4, 60
	server := filepath.Join(example, "server.js")
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--admin", adm, "--drain-timeout", "2s", "--workers", fmt.Sprint(workers), "--", "node", server)
	waitWorkersReady(t, p, workers)
	ips := testkit.ClientIPs(clients)

	check := func(s chatSummary, when string) {
		t.Helper()
		if s.Chats != clients || len(s.ChatWorkers) != workers || s.Census.Sockets != clients || s.Census.Servers != workers {
			t.Errorf("%s: %+v", when, s)
		}
		t.Logf("%s: %d clients over workers %v: the census counted %d sockets on %d workers (%d tries); "+
			"the chat from a client of worker %s reached all %d, on workers %v, in %d ms in all",
			when, s.Welcomed, s.PerWorker, s.Census.Sockets, s.Census.Servers, s.CensusTries, s.ChatFrom, s.Chats, s.ChatWorkers, s.Ms)
	}
	check(chatAcross(t, example, "http://"+p.addr, ips, workers), "first workers")
	_, body := opsDo(t, "GET", adm, "/workers")
	var infos []admin.WorkerInfo
	if err := json.Unmarshal([]byte(body), &infos); err != nil || len(infos) != workers {
		t.Fatalf("GET /workers: %v %s", err, body)
	}
	for _, w := range infos {
		if fmt.Sprint(w.AdapterNamespaces) != "[/]" {
			t.Errorf("%s: adapter namespaces %v, want [/]", w.Name, w.AdapterNamespaces)
		}
	}

	// A rolling restart: the new workers join the bus, the old ones leave.
	p.cmd.Process.Signal(syscall.SIGUSR1)
	testkit.WaitFor(t, "the rolling restart done", func() bool { return opsLogged(p, `"msg":"rolling restart done"`) },
		testkit.Within(60*time.Second))
	if !opsLogged(p, fmt.Sprintf(`"replaced":%d`, workers)) {
		t.Fatalf("the rolling restart did not replace every worker")
	}
	testkit.WaitFor(t, "the old workers stopped", func() bool {
		return strings.Count(p.stderr.String(), `"replaced":true`) == workers
	})
	// The old workers were announced gone as they exited: the first census
	// counts the new ones alone. (Unannounced, the adapter would wait for
	// their answers, then count them until its 10 s heartbeat timeout.)
	after := chatAcross(t, example, "http://"+p.addr, ips, workers)
	check(after, "after a rolling restart")
	if after.CensusTries != 1 {
		t.Errorf("the census after the rolling restart took %d tries, want 1: the old workers were not announced gone", after.CensusTries)
	}
	relayed := opsMetric(t, adm, `stickyd_worker_messages_total{result="relayed"}`)
	if dropped := opsMetric(t, adm, `stickyd_worker_messages_total{result="dropped"}`); relayed <= 0 || dropped != 0 {
		t.Errorf("worker messages: %v relayed, %v dropped", relayed, dropped)
	}
}
