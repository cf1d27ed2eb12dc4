// Package reaper makes stickyd a good parent for the processes its workers
// leave behind.
//
// A worker's children outlive it more often than one would think. `npm
// start` exits at once on SIGTERM and leaves its `node` draining; `sh -c
// "node app.js"` does the same; an app that crashes leaves the helpers it
// spawned. Linux gives such orphans to the nearest "subreaper" ancestor, or
// to PID 1, and only that process can collect their exit status. In a
// container stickyd is PID 1 (the image's entrypoint): whatever it does not
// collect stays a zombie for the life of the container, one or more per
// worker restart, until the container's process limit is reached.
//
// So while stickyd runs workers (or is PID 1) it collects them:
//
//	reaper.Subreaper()                // orphans of the workers come to stickyd
//	go reaper.Run(ctx, log)           // and are collected on SIGCHLD
//	err := reaper.Start(cmd)          // every child stickyd waits for itself...
//	err = reaper.Wait(cmd)            // ...is left to its own Wait
//
// Run collects only zombies that no Start registered: taking the exit
// status of a process that os/exec waits for would turn that Wait into an
// error and lose the worker's exit code. Start holds the registry's lock
// across the fork, and Run holds it while it collects, so a child is
// registered before Run can see it.
package reaper

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

var (
	mu    sync.Mutex
	owned = map[int]*exec.Cmd{} // children that a Wait of stickyd's own collects
	// reaped counts the orphans collected (Reaped).
	reaped atomic.Int64
	// procWarned is set once Collect has said that /proc cannot be read.
	procWarned atomic.Bool
)

// Start starts cmd, and leaves the collection of its exit status to Wait.
func Start(cmd *exec.Cmd) error {
	mu.Lock()
	defer mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	owned[cmd.Process.Pid] = cmd
	return nil
}

// Wait waits for cmd, started by Start (cmd.Wait).
func Wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	mu.Lock()
	if owned[cmd.Process.Pid] == cmd { // not a later child that got the pid since
		delete(owned, cmd.Process.Pid)
	}
	mu.Unlock()
	return err
}

// Subreaper makes this process the one that the orphans among its
// descendants are given to (PR_SET_CHILD_SUBREAPER), so that Run collects
// them; as PID 1 it is that already.
func Subreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// Reaped reports how many orphans Run has collected.
func Reaped() int64 { return reaped.Load() }

// Run collects the zombie children that no Start registered, at every
// SIGCHLD, until ctx ends. Each is logged at debug level.
func Run(ctx context.Context, log *zap.Logger) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	self := os.Getpid()
	for {
		Collect(self, log) // also the ones that exited before Notify
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		}
	}
}

// Collect collects, once, the zombie children of self that no Start
// registered, and returns how many. Run calls it at every SIGCHLD.
//
// The scan of /proc runs without the lock (it may be long on a busy host,
// and Start and Wait must not wait for it); each zombie is checked and
// collected under it. That is safe: the pid of a zombie nobody registered
// cannot be reused before it is collected, which only Collect does, and a
// child is registered before Start lets go of the lock.
func Collect(self int, log *zap.Logger) int {
	zombies, err := zombieChildren(self)
	if err != nil {
		if !procWarned.Swap(true) {
			log.Warn("reaper: cannot list child processes; orphans of the workers are not collected",
				zap.Error(err), zap.String("fix", "mount /proc (a container runtime does)"))
		}
		return 0
	}
	n := 0
	for _, z := range zombies {
		mu.Lock()
		if _, ok := owned[z.pid]; ok {
			mu.Unlock()
			continue
		}
		var ws unix.WaitStatus
		pid, err := unix.Wait4(z.pid, &ws, unix.WNOHANG, nil)
		mu.Unlock()
		if err != nil || pid != z.pid {
			continue // collected meanwhile (it was not ours to collect), or not a zombie yet
		}
		n++
		reaped.Add(1)
		fields := []zap.Field{zap.Int("pid", pid), zap.String("command", z.comm)}
		if ws.Signaled() {
			fields = append(fields, zap.String("signal", ws.Signal().String()))
		} else {
			fields = append(fields, zap.Int("exit_code", ws.ExitStatus()))
		}
		log.Debug("collected an orphaned process (a worker's child that outlived it)", fields...)
	}
	return n
}

// zombie is a child process that has exited and waits to be collected.
type zombie struct {
	pid  int
	comm string
}

// zombieChildren lists the zombie children of self from /proc. (Linux's
// /proc/PID/task/TID/children would list children alone, but it needs
// CONFIG_PROC_CHILDREN, which many kernels lack.)
func zombieChildren(self int) ([]zombie, error) {
	var out []zombie
	err := eachProc(func(pid int, st stat) {
		if st.state == 'Z' && st.ppid == self {
			out = append(out, zombie{pid: pid, comm: st.comm})
		}
	})
	return out, err
}

// eachProc calls f with every process in /proc and its stat; a process
// gone meanwhile is skipped. The error is that of listing /proc.
func eachProc(f func(pid int, st stat)) error {
	d, err := os.Open("/proc")
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			f(pid, st)
		}
	}
	return nil
}

// stat is what /proc/PID/stat says of a process, in part.
type stat struct {
	comm  string
	state byte // 'Z': exited, waits to be collected
	ppid  int
	pgrp  int
}

var errStat = errors.New("reaper: malformed /proc/PID/stat")

// readStat reads /proc/pid/stat: "pid (comm) state ppid pgrp ...". comm
// may hold spaces and parentheses, so the fields after it are found from
// its last ')'.
func readStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return stat{}, errStat
	}
	f := bytes.Fields(b[end+1:])
	if len(f) < 3 || len(f[0]) != 1 {
		return stat{}, errStat
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgrp, err2 := strconv.Atoi(string(f[2]))
	if err1 != nil || err2 != nil {
		return stat{}, errStat
	}
	return stat{comm: string(b[open+1 : end]), state: f[0][0], ppid: ppid, pgrp: pgrp}, nil
}

// Group lists the processes of process group pgid that have not exited
// (zombies left out), with their command names: what a worker left running.
// The error is that of reading /proc.
func Group(pgid int) (map[int]string, error) {
	out := map[int]string{}
	err := eachProc(func(pid int, st stat) {
		if st.pgrp == pgid && st.state != 'Z' {
			out[pid] = st.comm
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// GroupsRSS returns the resident memory, in bytes, of each of the process
// groups pgids: the sum over the group's processes (pages they share, such
// as a wrapper's and its app's libraries, count once for each). Groups
// with no process are left out. The error is that of reading /proc.
func GroupsRSS(pgids map[int]bool) (map[int]int64, error) {
	page := int64(os.Getpagesize())
	out := map[int]int64{}
	err := eachProc(func(pid int, st stat) {
		if !pgids[st.pgrp] {
			return
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm") // size resident shared ...
		if err != nil {
			return // gone meanwhile
		}
		if f := bytes.Fields(b); len(f) >= 2 {
			if pages, err := strconv.ParseInt(string(f[1]), 10, 64); err == nil {
				out[st.pgrp] += pages * page
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
