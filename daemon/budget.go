package daemon

import (
	"runtime"

	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// fdReserve is the descriptors kept out of the connection budget for
// everything else: the listeners, the engine's epoll and event descriptors,
// the Go runtime's, the admin API and its clients, health checks, DNS,
// worker pipes and log files.
const fdReserve = 128

// fdsPerWorker are the descriptors stickyd holds for each launched worker
// slot, at most: the worker's output pipes, those of its replacement
// beside it in a rolling restart, and the socket that reserves the
// replacement's automatic port.
const fdsPerWorker = 5

// fdsPerLoop are the descriptors each event loop of the epoll engine holds
// besides its connections: its epoll set and eventfd, its socket of the
// listener's SO_REUSEPORT group and that socket's duplicate.
const fdsPerLoop = 4

// fdBudget splits the open-file limit between client connections and the
// epoll engine's splice pipes, so that at the connection cap every
// accepted client still gets its backend socket and nothing else runs out.
type fdBudget struct {
	limit int // RLIMIT_NOFILE (soft); 0: unknown or too large to matter
	conns int // max_connections in force; 0: no cap
	pipes int // splice pipes the epoll engine may hold at once
}

// newFDBudget returns the budget for cfg under the process's open-file
// limit. A max_connections the limit cannot hold is lowered to what it
// can, with a warning that says how to fix it.
func newFDBudget(cfg *config.Config, log *zap.Logger) fdBudget {
	limit := 0
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur <= 1<<24 {
		limit = int(lim.Cur)
	}
	return budgetFor(limit, runtime.GOMAXPROCS(0), cfg, log)
}

// budgetFor is newFDBudget under an open-file limit (0: unknown) for an
// engine of loops event loops.
func budgetFor(limit, loops int, cfg *config.Config, log *zap.Logger) fdBudget {
	b := fdBudget{pipes: relay.DefaultMaxPipes, limit: limit}
	perConn := 2 // epoll engine: two sockets, plus the engine's pipes
	if cfg.EngineName() == "goroutine" {
		perConn, b.pipes = 6, 0 // two sockets and two splice pipes each
	} else if b.limit > 0 {
		// A fortieth of the budget, 2..256 pipes: 256 (512 descriptors)
		// at 20000, 4 at 300; past them bulk copies through a buffer.
		b.pipes = min(max((b.limit-fdReserve)/40, 2), relay.DefaultMaxPipes)
	}
	b.conns = cfg.MaxConnections
	if b.limit == 0 {
		return b
	}
	reserve := fdReserve + fdsPerLoop*loops
	if cfg.Workers != nil {
		reserve += fdsPerWorker * cfg.Workers.WorkerCount()
	}
	fits := max(1, (b.limit-reserve-2*b.pipes)/perConn)
	switch {
	case b.conns == 0:
		b.conns = fits
	case b.conns > fits:
		log.Warn("max_connections is more than the open-file limit allows; lowered",
			zap.Int("max_connections", cfg.MaxConnections), zap.Int("lowered_to", fits),
			zap.Int("open_file_limit", b.limit),
			zap.Int("needs_open_files", b.conns*perConn+2*b.pipes+reserve),
			zap.String("fix", "raise the limit (ulimit -n, systemd LimitNOFILE=) or lower max_connections"))
		b.conns = fits
	}
	return b
}
