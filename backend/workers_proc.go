package backend

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	_ "github.com/stickyd/stickyd/internal/linuxonly" // stickyd is Linux-only
	"io/fs"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/stickyd/stickyd/internal/reaper"
	"github.com/stickyd/stickyd/proxyproto"
	"go.uber.org/zap"
)

// maxWorkerLogLine bounds one forwarded output line; longer lines are logged in
// pieces of this size, each but the last marked continued=true.
const maxWorkerLogLine = 64 << 10

// spawner forks every worker from one goroutine locked to its OS thread, so
// that the thread whose exit triggers Pdeathsig lives as long as Run (see
// Supervisor).
type workerSpawner struct {
	reqs chan workerSpawnReq
	done chan struct{}
}

type workerSpawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func startWorkerSpawner() *workerSpawner {
	sp := &workerSpawner{reqs: make(chan workerSpawnReq), done: make(chan struct{})}
	go sp.loop()
	return sp
}

func (sp *workerSpawner) loop() {
	// Never unlocked: when this goroutine returns, Go ends the thread, and
	// only then (after Run has reaped every worker) may Pdeathsig fire.
	runtime.LockOSThread()
	defer close(sp.done)
	for r := range sp.reqs {
		r.errc <- reaper.Start(r.cmd) // its Wait, not the reaper, collects it
	}
}

// start forks cmd on the spawner's thread.
func (sp *workerSpawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	sp.reqs <- workerSpawnReq{cmd: cmd, errc: errc}
	return <-errc
}

// stop ends the spawner; no start may be in flight or follow.
func (sp *workerSpawner) stop() {
	close(sp.reqs)
	<-sp.done
}

// workerProc is one running worker process.
type workerProc struct {
	cmd     *exec.Cmd
	pid     int
	started time.Time
	exited  chan struct{} // closed once cmd.Wait has returned
	gone    chan struct{} // closed by cleanup: the group is gone (or left to the kernel) and the output read
	pipes   []*os.File    // read ends of stdout and stderr
	bus     *busMember    // its channel on the workers' bus, or nil
	output  sync.WaitGroup
	closing atomic.Bool // set by cleanup before it cuts the reads of pipes short
}

// spawn starts w's command, told to listen at a, with its output piped
// into the log.
func (s *Supervisor) spawn(sp *workerSpawner, w *supervisedWorker, a *workerAddr) (*workerProc, error) {
	if err := clearAddress(a); err != nil {
		return nil, err
	}
	cmd := exec.Command(s.cfg.Command[0], s.cfg.Command[1:]...)
	cmd.Env, cmd.Dir = a.env, s.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var channel *os.File // stickyd's end of the worker's channel (workers_bus.go)
	if s.bus != nil {
		ours, theirs, env, err := busChannel()
		if err != nil {
			return nil, err
		}
		defer theirs.Close() // the child has its own copy once started
		cmd.ExtraFiles, cmd.Env, channel = []*os.File{theirs}, slices.Concat(a.env, env), ours
	}
	p, err := s.spawnWith(sp, w, cmd)
	switch {
	case err != nil && channel != nil:
		channel.Close()
	case channel != nil:
		if p.bus, err = s.bus.join(w.slot.Slot, p.pid, channel); err != nil {
			s.log.Error("worker has no cluster-adapter channel", zap.Int("worker", w.slot.Slot), zap.Error(err))
		}
		err = nil
	}
	return p, err
}

// spawnWith starts cmd, its output piped into the log or inherited.
func (s *Supervisor) spawnWith(sp *workerSpawner, w *supervisedWorker, cmd *exec.Cmd) (*workerProc, error) {
	if s.cfg.InheritOutput {
		return s.spawnInherit(sp, w, cmd)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = sp.start(cmd)
	outW.Close() // the child holds its own copies
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	p := newWorkerProc(cmd, outR, errR)
	log := s.log.With(zap.Int("worker", w.slot.Slot))
	p.output.Go(func() { forwardWorkerOutput(outR, log.With(zap.String("stream", "stdout")), &p.closing) })
	p.output.Go(func() { forwardWorkerOutput(errR, log.With(zap.String("stream", "stderr")), &p.closing) })
	s.log.Debug("worker started", zap.Int("worker", w.slot.Slot), zap.Int("pid", p.pid),
		zap.Strings("command", s.cfg.Command))
	return p, nil
}

// spawnInherit starts cmd with stickyd's own stdout and stderr.
func (s *Supervisor) spawnInherit(sp *workerSpawner, w *supervisedWorker, cmd *exec.Cmd) (*workerProc, error) {
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := sp.start(cmd); err != nil {
		return nil, err
	}
	p := newWorkerProc(cmd)
	s.log.Debug("worker started", zap.Int("worker", w.slot.Slot), zap.Int("pid", p.pid),
		zap.Strings("command", s.cfg.Command), zap.String("output", "inherit"))
	return p, nil
}

// newWorkerProc makes the workerProc of cmd, just started, with the read ends
// of its output pipes, and waits for it in the background.
func newWorkerProc(cmd *exec.Cmd, pipes ...*os.File) *workerProc {
	p := &workerProc{cmd: cmd, pid: cmd.Process.Pid, started: time.Now(), exited: make(chan struct{}),
		gone: make(chan struct{}), pipes: pipes}
	go func() {
		_ = reaper.Wait(cmd) // the status is read from cmd.ProcessState
		close(p.exited)
	}()
	return p
}

// clearAddress prepares address a for a new process: it removes a stale
// socket file, releases the reservation of an automatic port, and refuses
// (ErrWorkerPortInUse) a port that another program holds: the worker would
// only fail to bind it, or, worse, stickyd would take that program's
// answers for the worker's.
func clearAddress(a *workerAddr) error {
	if a.network == "unix" {
		return removeStaleWorkerSocket(a.addr)
	}
	a.unreserve()
	return checkWorkerPort(a.port)
}

// removeStaleWorkerSocket deletes a socket file left by an earlier worker; it
// refuses to delete anything that is not a socket.
func removeStaleWorkerSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat worker socket: %w", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("worker socket path %s exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale worker socket: %w", err)
	}
	return nil
}

// accepting reports whether address a accepts a connection right now.
// With SendProxy set the probe opens with a PROXY LOCAL header (v1: PROXY
// UNKNOWN), as a health check does, before it closes: a worker that
// requires the header logs a bare probe as a broken one (nginx with
// proxy_protocol: "[error] broken header", HAProxy with accept-proxy:
// "Connection closed while waiting for PROXY protocol header").
func (s *Supervisor) accepting(a *workerAddr) bool {
	c, err := net.DialTimeout(a.network, a.addr, s.timing.dialTimeout)
	if err != nil {
		return false
	}
	if s.cfg.SendProxy != 0 {
		_ = c.SetWriteDeadline(time.Now().Add(s.timing.dialTimeout))
		// The connect answered the question: a worker that closed at once
		// is up all the same.
		_ = proxyproto.WriteLocal(c, s.cfg.SendProxy)
	}
	c.Close()
	return true
}

// signal sends sig to p's whole process group.
func (p *workerProc) signal(sig syscall.Signal) {
	_ = syscall.Kill(-p.pid, sig) // ESRCH: the group is already gone
}

// stop sends SIGTERM to p's group, then SIGKILL after timeout, and returns
// once p has exited and, within timeout, the rest of its group too.
//
// The rest matters: a wrapper (npm start, yarn, sh -c "node app.js")
// exits at once on SIGTERM, while the app behind it, which got the same
// SIGTERM, is still finishing its requests. Killing the group when the
// wrapper exits would cut them; the app gets the same stop_timeout as a
// worker started directly.
func (p *workerProc) stop(log *zap.Logger, timeout time.Duration) {
	p.signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		log.Warn("worker ignored SIGTERM, killing it", zap.Duration("stop_timeout", timeout))
		p.signal(syscall.SIGKILL)
		<-p.exited
		return
	}
	if p.groupGone(t.C) {
		return
	}
	left, err := reaper.Group(p.pid)
	if err == nil && len(left) == 0 {
		return // gone meanwhile
	}
	fields := []zap.Field{zap.Duration("stop_timeout", timeout), zap.Any("processes", left),
		zap.String("fix", "let the app exit on SIGTERM once its requests are done (stickyd-worker's listen does), or raise stop_timeout; a wrapper that exits first (npm start) hides which process it is: run [\"node\", \"server.js\"] instead")}
	if err != nil {
		fields = append(fields, zap.NamedError("processes_error", err))
	}
	log.Warn("worker exited, but processes of its group did not exit within stop_timeout of SIGTERM; killing them", fields...)
	p.signal(syscall.SIGKILL)
}

// groupPoll is how often groupGone looks for the rest of a worker's group.
const groupPoll = 20 * time.Millisecond

// groupGone waits until no process of p's group runs (true), or until
// deadline fires (false). Zombies do not count: an orphan that exited but
// that nobody has collected yet holds nothing.
func (p *workerProc) groupGone(deadline <-chan time.Time) bool {
	tick := time.NewTicker(groupPoll)
	defer tick.Stop()
	for n := 0; ; n++ {
		if syscall.Kill(-p.pid, 0) == syscall.ESRCH {
			return true
		}
		if n%10 == 9 { // only zombies left? (without /proc, only kill(2) tells)
			if g, err := reaper.Group(p.pid); err == nil && len(g) == 0 {
				return true
			}
		}
		select {
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
}

// cleanup runs after p has exited: it kills whatever is left of its process
// group, waits (at most grace) for it to be gone, so that no straggler
// holds the worker's address when the next process starts there, and for
// the output pipes to drain.
func (p *workerProc) cleanup(grace time.Duration) {
	defer close(p.gone)
	p.signal(syscall.SIGKILL)
	if p.bus != nil {
		p.bus.close()
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	expired := !p.groupGone(t.C) // then t has fired
	done := make(chan struct{})
	go func() {
		p.output.Wait()
		close(done)
	}()
	if !expired {
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
	// A process outside the group still holds a pipe: stop reading.
	p.closing.Store(true)
	for _, f := range p.pipes {
		if f.SetReadDeadline(time.Now()) != nil {
			_ = f.Close()
		}
	}
	<-done
}

// logExit logs how p ended; stopping is true during shutdown.
func (p *workerProc) logExit(log *zap.Logger, stopping bool) {
	fields := []zap.Field{zap.Duration("uptime", time.Since(p.started))}
	ps := p.cmd.ProcessState
	if ps == nil { // Wait failed: the status was lost
		fields = append(fields, zap.String("exit_status", "unknown"))
	} else if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		fields = append(fields, zap.String("signal", ws.Signal().String()))
	} else {
		fields = append(fields, zap.Int("exit_code", ps.ExitCode()))
	}
	if stopping {
		log.Info("worker stopped", fields...)
		return
	}
	log.Warn("worker exited", fields...)
}

// partialLineWait is how long output without a newline waits before it is
// logged as it is (binary output, a prompt): a worker's last words are
// never held back while it runs.
const partialLineWait = time.Second

// forwardWorkerOutput logs each line read from r until r ends (or closing
// is set and a read deadline cuts it short), then closes r. A line longer
// than maxWorkerLogLine, or left without a newline for partialLineWait, is
// logged in pieces, cut between UTF-8 characters, each but the last marked
// continued=true.
func forwardWorkerOutput(r *os.File, log *zap.Logger, closing *atomic.Bool) {
	defer r.Close()
	timed := r.SetReadDeadline(time.Now().Add(partialLineWait)) == nil
	br := bufio.NewReaderSize(r, maxWorkerLogLine)
	var carry []byte // start of a character cut off the previous piece
	for {
		line, err := br.ReadSlice('\n')
		if timed && !closing.Load() {
			_ = r.SetReadDeadline(time.Now().Add(partialLineWait))
		}
		if len(carry) > 0 {
			line, carry = append(carry, line...), nil
		}
		idle := errors.Is(err, os.ErrDeadlineExceeded) && !closing.Load()
		if errors.Is(err, bufio.ErrBufferFull) || idle {
			if cut := incompleteRuneStart(line); cut >= 0 {
				line, carry = line[:cut], bytes.Clone(line[cut:])
			}
			if len(line) > 0 {
				log.Info(string(line), zap.Bool("continued", true))
			}
			continue
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if len(line) > 0 {
			log.Info(string(line))
		}
		if err != nil {
			return
		}
	}
}

// incompleteRuneStart returns where a UTF-8 character that b cuts short
// begins, or -1.
func incompleteRuneStart(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return i
			}
			return -1
		}
	}
	return -1
}
