package daemon

import (
	"context"
	"os"

	"github.com/stickyd/stickyd/internal/reaper"
	"go.uber.org/zap"
)

// startReaper makes stickyd collect the processes its workers leave
// behind (package reaper) for the rest of its life: the app behind a
// wrapper such as npm start, the children of a worker that crashed. It
// becomes the workers' subreaper, so that their orphans come to it rather
// than to init; as PID 1 (a container's entrypoint) every orphan in the
// container is its own anyway, workers or not, and one not collected stays
// a zombie until the container ends. It reports whether the reaper runs.
func (d *daemon) startReaper() bool {
	pid1 := isInit()
	if d.sup == nil && !pid1 {
		return false
	}
	if !pid1 {
		if err := reaper.Subreaper(); err != nil {
			d.log.Warn("cannot become the workers' subreaper; what they leave behind goes to init", zap.Error(err))
		}
	}
	go reaper.Run(context.Background(), d.log.Named("reaper"))
	return true
}

// isInit reports whether stickyd is PID 1, a container's entrypoint: the
// container ends when it exits.
func isInit() bool { return os.Getpid() == 1 }
