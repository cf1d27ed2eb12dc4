package integration_test

// Under a systemd unit of Type=notify: stickyd reports ready (after its
// workers), reloading, the new main pid of a SIGUSR2 upgrade, stopping,
// and keeps the watchdog fed, on the datagram socket systemd names in
// $NOTIFY_SOCKET; its workers never see that socket.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
)

// notifySocket is testkit's stand-in for systemd's notify socket, with
// next.
type notifySocket struct{ *testkit.NotifySocket }

func listenNotify(t *testing.T) notifySocket { return notifySocket{testkit.ListenNotify(t)} }

// next returns the next message that has key (skipping the watchdog's
// keep-alives and others), failing after testkit.Guard.
func (n *notifySocket) next(t *testing.T, key string) map[string]string {
	t.Helper()
	deadline := time.After(testkit.Guard)
	for {
		select {
		case m := <-n.Msgs:
			if _, ok := m[key]; ok {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s message on the notify socket", key)
		}
	}
}

func TestSystemdNotify(t *testing.T) {
	ns := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", ns.Path)
	t.Setenv("WATCHDOG_USEC", "200000") // 0.2 s: a keep-alive every 0.1 s
	addr, adm := testkit.FreePort(t), testkit.FreePort(t)
	d := opsStartDaemon(t, addr, "--admin", adm, "--workers", "2", "--", "stickyd", "hello-worker")

	// Ready once the workers are: each has answered a probe by then.
	ready := ns.next(t, "READY")
	if ready["READY"] != "1" || ready["MAINPID"] != strconv.Itoa(d.cmd.Process.Pid) || !strings.Contains(ready["STATUS"], "serving on "+addr) {
		t.Errorf("ready message %v (pid %d)", ready, d.cmd.Process.Pid)
	}
	if resp, err := http.Get("http://" + addr + "/"); err != nil || resp.StatusCode != 200 {
		t.Errorf("right after READY: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	var keepAlives int
	testkit.WaitFor(t, "the watchdog fed", func() bool {
		for {
			select {
			case m := <-ns.Msgs:
				if m["WATCHDOG"] == "1" {
					keepAlives++
				}
			default:
				return keepAlives >= 3
			}
		}
	})

	// The workers do not see systemd's variables.
	_, body := opsDo(t, "GET", adm, "/workers")
	var workers []struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(body), &workers); err != nil || len(workers) != 2 {
		t.Fatalf("GET /workers: %s %v", body, err)
	}
	for _, w := range workers {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", w.PID))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if strings.HasPrefix(kv, "NOTIFY_SOCKET=") || strings.HasPrefix(kv, "WATCHDOG_") {
				t.Errorf("worker %d has %s", w.PID, kv)
			}
		}
	}

	// SIGHUP: reloading, with the monotonic clock systemd's notify-reload
	// wants, then ready again.
	d.cmd.Process.Signal(syscall.SIGHUP)
	rl := ns.next(t, "RELOADING")
	if usec, err := strconv.ParseInt(rl["MONOTONIC_USEC"], 10, 64); err != nil || usec <= 0 {
		t.Errorf("reloading message %v", rl)
	}
	if m := ns.next(t, "READY"); m["MAINPID"] != strconv.Itoa(d.cmd.Process.Pid) {
		t.Errorf("ready after the reload: %v", m)
	}

	// SIGUSR2: the new process reports itself as the main pid; the old one
	// drains and exits without reporting a stop.
	oldPid := d.cmd.Process.Pid
	d.cmd.Process.Signal(syscall.SIGUSR2)
	up := ns.next(t, "READY")
	testkit.WaitFor(t, "the new process serving", func() bool { p := d.pid(); return p != 0 && p != oldPid })
	newPid := d.pid()
	if up["MAINPID"] != strconv.Itoa(newPid) {
		t.Errorf("after the upgrade: %v, want MAINPID=%d", up, newPid)
	}
	testkit.Await(t, d.exited, "the old process did not exit")
	n := keepAlives
	testkit.WaitFor(t, "the new process feeds the watchdog", func() bool {
		for {
			select {
			case m := <-ns.Msgs:
				if _, ok := m["STOPPING"]; ok {
					t.Errorf("a stop reported by the old process of an upgrade: %v", m)
				}
				if m["WATCHDOG"] == "1" {
					keepAlives++
				}
			default:
				return keepAlives >= n+3
			}
		}
	})

	// SIGTERM: stopping.
	syscall.Kill(newPid, syscall.SIGTERM)
	if m := ns.next(t, "STOPPING"); m["STOPPING"] != "1" {
		t.Errorf("stopping message %v", m)
	}
	testkit.WaitFor(t, "the new process gone", func() bool { return opsGone(newPid) })
}
