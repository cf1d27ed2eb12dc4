package backend

import (
	"context"
	"errors"
	"strconv"
	"testing"
)

func TestHandoffEncoding(t *testing.T) {
	h := Handoff{Base: 12070, Cur: []int{0, 1, 0}}
	got, err := ParseHandoff(h.String())
	if err != nil || got.Base != h.Base || len(got.Cur) != 3 || got.Cur[1] != 1 || got.Cur[2] != 0 {
		t.Fatalf("ParseHandoff(%q) = %+v, %v", h.String(), got, err)
	}
	for _, bad := range []string{"", "base=1", "base=x cur=0", "base=1 cur=2", "base=1 cur=0,,1", "cur=0 base=1", "base=-1 cur=0"} {
		if _, err := ParseHandoff(bad); err == nil {
			t.Errorf("ParseHandoff(%q): no error", bad)
		}
	}
}

// TestWorkerHandoff: the supervisor of an upgraded process starts each
// slot's worker on the address beside the running one's, while the old
// workers keep serving; no rolling restart runs in the old supervisor
// while the handoff holds. With automatic ports (the old supervisor gives
// up its reservations), port_base and sockets, after a rolling restart
// moved one slot, so that the slots differ.
func TestWorkerHandoff(t *testing.T) {
	for _, mode := range []string{"auto", "port_base", "unix"} {
		t.Run(mode, func(t *testing.T) {
			cfg := rollConfig(t, 2, nil)
			switch mode {
			case "auto":
				cfg.PortBase = 0
			case "unix":
				cfg.PortBase, cfg.SocketDir = 0, t.TempDir()
			}
			old := startSupervisor(t, cfg, nil)
			old.waitState(t, 0, true)
			old.waitState(t, 1, true)
			if _, err := old.sup.RollingRestart(context.Background()); err != nil {
				t.Fatal(err)
			}
			h, release, err := old.sup.Handoff()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := old.sup.RollingRestart(context.Background()); !errors.Is(err, ErrRollingRestartRunning) {
				t.Errorf("RollingRestart during the handoff = %v, want ErrRollingRestartRunning", err)
			}
			if _, _, err := old.sup.Handoff(); err == nil {
				t.Error("a second Handoff meanwhile: no error")
			}

			ncfg := cfg
			ncfg.Handoff = &h
			next := startSupervisor(t, ncfg, nil)
			next.waitState(t, 0, true)
			next.waitState(t, 1, true)
			olds, news := old.sup.Slots(), next.sup.Slots()
			for i := range 2 {
				oldw, neww := old.sup.workers[i], next.sup.workers[i]
				if news[i].Address == olds[i].Address || news[i].Address != oldw.addrs[1-oldw.cur].address || neww.addrs[1-neww.cur].address != olds[i].Address {
					t.Errorf("slot %d: the new worker at %s, the old at %s; want the slot's two addresses", i, news[i].Address, olds[i].Address)
				}
				if askEnv(t, news[i].Address).Pid == askEnv(t, olds[i].Address).Pid {
					t.Errorf("slot %d: one process at both addresses", i)
				}
				if env := askEnv(t, news[i].Address); env.ID != strconv.Itoa(i) {
					t.Errorf("slot %d: new worker has id %s", i, env.ID)
				}
			}
			// The upgrade failed: the new process and its workers are gone.
			if err := next.stop(t); err != nil {
				t.Fatal(err)
			}
			release()
			if _, err := old.sup.RollingRestart(context.Background()); err != nil {
				t.Errorf("RollingRestart after release: %v", err)
			}
		})
	}
}

func TestWorkerHandoffMismatch(t *testing.T) {
	cfg := rollConfig(t, 2, nil)
	cfg.Handoff = &Handoff{Cur: []int{0, 0, 0}}
	if _, err := NewSupervisor(cfg, nil, nil); !errors.Is(err, ErrWorkerConfig) || !errors.Is(err, errHandoffMismatch) {
		t.Errorf("a handoff of 3 workers for a count of 2: %v", err)
	}
	cfg.Handoff = &Handoff{Base: 12000, Cur: []int{0, 0}} // automatic ports, but port_base is set now
	if _, err := NewSupervisor(cfg, nil, nil); !errors.Is(err, errHandoffMismatch) {
		t.Errorf("a handoff of automatic ports for port_base: %v", err)
	}
}

// TestWorkerHandoffNewCount: with automatic ports before and now, a new
// count takes a block of its own, apart from the old workers' ports.
func TestWorkerHandoffNewCount(t *testing.T) {
	cfg := rollConfig(t, 1, nil)
	cfg.PortBase = 0
	old := startSupervisor(t, cfg, nil)
	old.waitState(t, 0, true)
	h, _, err := old.sup.Handoff()
	if err != nil {
		t.Fatal(err)
	}
	ncfg := cfg
	ncfg.Count, ncfg.Handoff = 3, &h
	next := startSupervisor(t, ncfg, nil)
	for i := range 3 {
		next.waitState(t, i, true)
		if addr := next.sup.Slots()[i].Address; addr == old.sup.Slots()[0].Address {
			t.Errorf("new worker %d at the old worker's address %s", i, addr)
		}
	}
	if e := next.logs.FilterMessage("upgrade: the worker count changed; the new workers start on new ports").All(); len(e) != 1 {
		t.Errorf("the count change was not logged: %v", e)
	}
}
