package backend

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Handoff is what a running Supervisor tells the Supervisor of a new
// stickyd process in a zero-downtime upgrade (SIGUSR2): where its workers
// listen. The new one starts each slot's worker on the slot's other
// address, as a rolling restart would, while the old workers serve the
// old process's connections until it has drained and stopped them.
type Handoff struct {
	// Base is the first port of the automatic port block; 0 with
	// PortBase or SocketDir, whose addresses the config gives.
	Base int
	// Cur is, per slot, which of its two addresses the old worker listens
	// on (0: the first).
	Cur []int
}

// String encodes h for the environment: "base=12070 cur=0,1,0".
func (h Handoff) String() string {
	cur := make([]string, len(h.Cur))
	for i, c := range h.Cur {
		cur[i] = strconv.Itoa(c)
	}
	return "base=" + strconv.Itoa(h.Base) + " cur=" + strings.Join(cur, ",")
}

// ParseHandoff decodes what Handoff.String encoded.
func ParseHandoff(s string) (Handoff, error) {
	var h Handoff
	base, cur, ok := strings.Cut(s, " ")
	b, okBase := strings.CutPrefix(base, "base=")
	c, okCur := strings.CutPrefix(cur, "cur=")
	if !ok || !okBase || !okCur {
		return h, fmt.Errorf("backend: bad worker handoff %q", s)
	}
	var err error
	if h.Base, err = strconv.Atoi(b); err != nil || h.Base < 0 {
		return h, fmt.Errorf("backend: bad worker handoff %q", s)
	}
	for _, f := range strings.Split(c, ",") {
		switch f {
		case "0", "1":
			h.Cur = append(h.Cur, int(f[0]-'0'))
		default:
			return h, fmt.Errorf("backend: bad worker handoff %q", s)
		}
	}
	return h, nil
}

// errHandoffMismatch wraps the reasons a Handoff does not fit a config.
var errHandoffMismatch = errors.New("the running stickyd's workers do not match the new config")

// fits reports why h cannot come from a Supervisor of c (nil: it can).
func (h Handoff) fits(c *WorkerConfig) error {
	switch {
	case len(h.Cur) != c.count():
		return fmt.Errorf("%w: they are %d, count is %d", errHandoffMismatch, len(h.Cur), c.count())
	case (h.Base != 0) != (c.PortBase == 0 && c.SocketDir == ""):
		return fmt.Errorf("%w: port_base or socket_dir changed", errHandoffMismatch)
	case h.Base != 0 && h.Base+2*c.count() > 65536:
		return fmt.Errorf("%w: port %d and on", errHandoffMismatch, h.Base)
	}
	return nil
}

// Handoff returns where the workers listen now, for the Supervisor of the
// process that an upgrade starts, and gives up the reservations of the
// slots' other addresses, on which that process starts its workers.
// While the handoff holds, no rolling restart or memory replacement runs
// (they would move the workers under the new process's feet): release
// ends it when the upgrade failed. Workers replaced lately that still
// drain on those addresses are waited for (at most stop_timeout and a
// little). An error while a rolling restart or a memory replacement runs,
// or when they do not stop in time.
func (s *Supervisor) Handoff() (h Handoff, release func(), err error) {
	if !s.busy.CompareAndSwap(busyNone, busyHandoff) {
		return h, nil, fmt.Errorf("%w (or a worker is replaced for its memory): upgrade once it is over", ErrRollingRestartRunning)
	}
	// A worker replaced lately may still drain on the address the new
	// process needs: wait for it (none can start meanwhile, busy is held).
	deadline := time.Now().Add(s.cfg.stopTimeout() + s.timing.outputGrace + time.Second)
	for s.retirees.Load() > 0 {
		if time.Now().After(deadline) {
			s.busy.Store(busyNone)
			return h, nil, fmt.Errorf("%w: %d replaced worker(s) still stopping on the addresses the new workers need: upgrade once they have",
				ErrRollingRestartRunning, s.retirees.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.workers {
		h.Cur = append(h.Cur, w.cur)
		if other := w.addrs[1-w.cur]; other != nil {
			other.unreserve()
		}
	}
	if s.cfg.PortBase == 0 && s.cfg.SocketDir == "" {
		h.Base = s.workers[0].addrs[0].port
	}
	return h, func() { s.busy.Store(busyNone) }, nil
}
