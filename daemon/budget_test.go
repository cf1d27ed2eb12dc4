package daemon

import (
	"testing"

	"github.com/stickyd/stickyd/config"
	"go.uber.org/zap"
)

// The open-file budget keeps 128 descriptors and 4 per event loop out of
// the connections, then a fortieth of the rest for pipes.
func TestFDBudgetReservesPerLoop(t *testing.T) {
	cfg := &config.Config{}
	for _, tc := range []struct{ limit, loops, conns, pipes int }{
		{20000, 2, 9676, 256},  // (20000 - 136 - 512) / 2
		{300, 2, 78, 4},        // (300 - 136 - 8) / 2
		{20000, 64, 9552, 256}, // (20000 - 384 - 512) / 2
		{0, 2, 0, 256},         // no limit known: no cap
	} {
		b := budgetFor(tc.limit, tc.loops, cfg, zap.NewNop())
		if b.conns != tc.conns || b.pipes != tc.pipes {
			t.Errorf("limit %d, %d loops: %d connections, %d pipes; want %d, %d", tc.limit, tc.loops, b.conns, b.pipes, tc.conns, tc.pipes)
		}
	}
}
