package daemon

import (
	"context"
	"os"
	"strings"

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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { reaper.Run(ctx, d.log.Named("reaper")); close(done) }()
	d.stopReaper = func() { cancel(); <-done }
	return true
}

// isInit reports whether stickyd is PID 1, a container's entrypoint.
func isInit() bool { return os.Getpid() == 1 }

// containerInits are the init programs that container runtimes put at PID
// 1 (docker run --init: tini, installed as docker-init; podman:
// catatonit), each of which exits, ending the container, when its one
// child does.
var containerInits = map[string]bool{"tini": true, "docker-init": true, "dumb-init": true, "catatonit": true}

// endsContainer says why this process's exit ends its container, or "":
// it is PID 1, or the child of a container's init.
func endsContainer() string {
	if isInit() {
		return "stickyd is PID 1 (a container's entrypoint)"
	}
	switch os.Getppid() {
	case 0: // the parent is outside this PID namespace: a runtime's shim
		return "stickyd is its container's main process (its parent is outside its PID namespace, as with Kubernetes' shareProcessNamespace)"
	case 1: // an init: a container's, or a host's (systemd, which upgrades suit)
	default:
		return ""
	}
	comm, err := os.ReadFile("/proc/1/comm")
	if name := strings.TrimSpace(string(comm)); err == nil && containerInits[name] {
		return "stickyd is the child of " + name + ", a container's init (PID 1), which exits when stickyd does"
	}
	return ""
}
