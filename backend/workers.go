package backend

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Errors returned by NewSupervisor and Supervisor.Run.
var (
	// ErrWorkerConfig wraps every validation error of a WorkerConfig; the
	// message names the offending key of the [workers] table.
	ErrWorkerConfig = errors.New("backend: invalid [workers] config")
	// ErrSupervisorRunning is returned by a second call to Supervisor.Run.
	ErrSupervisorRunning = errors.New("backend: supervisor already ran")
)

// Defaults of WorkerConfig, applied by its accessors when a field is zero.
const (
	DefaultWorkerStartupTimeout = 30 * time.Second
	DefaultWorkerStopTimeout    = 10 * time.Second
)

// maxSocketPath is the longest path a unix socket address can hold on Linux
// (sun_path is 108 bytes including the terminating NUL).
const maxSocketPath = 107

// WorkerConfig mirrors the [workers] config table. Zero values mean
// defaults, resolved in accessors (never written back).
type WorkerConfig struct {
	// Command is the worker's argv, required. A bare name is looked up in
	// $PATH; a relative path is resolved against Dir.
	Command []string
	// Count is the number of workers (default 1). The caller resolves
	// "auto" to one per CPU it may use (config: a cgroup CPU quota counts).
	Count int
	// PortBase: worker i listens on 127.0.0.1:<PortBase+i>, and its
	// replacement in a rolling restart on <PortBase+Count+i> (then the
	// other way round). Zero (the default) picks a block of 2 x Count free
	// ports at a random base below the ephemeral range when the Supervisor
	// is made; either way a slot keeps its port until a rolling restart.
	PortBase int
	// SocketDir, if set, switches to unix sockets: worker i gets
	// SOCKET=<SocketDir>/worker-<i>.sock (in a rolling restart,
	// worker-<i>.alt.sock) instead of PORT, and its address is
	// "unix:<path>". The directory is created (0700) by NewSupervisor if missing.
	SocketDir string
	// Env is added to the environment stickyd inherited. PORT, SOCKET,
	// STICKYD_WORKER_ID and STICKYD_WORKERS are always set by the
	// supervisor and cannot be overridden here.
	Env map[string]string
	// Dir is the workers' working directory (default: stickyd's).
	Dir string
	// StartupTimeout bounds how long a worker may take to accept
	// connections (default 30s).
	StartupTimeout time.Duration
	// StopTimeout is the grace between SIGTERM and SIGKILL when stopping
	// (default 10s).
	StopTimeout time.Duration
	// SendProxy is the PROXY version (1 or 2) of the LOCAL header that
	// opens each readiness probe; 0 sends none. The daemon sets it like a
	// health check's (health.send_proxy, defaulting to send_proxy).
	SendProxy byte
	// MaxMemory, in bytes: a worker whose process group's resident memory
	// stays above it is replaced without downtime (workers_memory.go).
	// Zero: no limit (the memory is still read, for Memory).
	MaxMemory int64
	// NodeIPC gives each worker a Node IPC channel (NODE_CHANNEL_FD, on
	// descriptor 3) on the workers' bus (workers_bus.go), over which
	// @socket.io/cluster-adapter reaches the other workers.
	NodeIPC bool
	// InheritOutput gives the workers stickyd's own stdout and stderr,
	// as Node's cluster does, instead of logging each line they print
	// with worker=<i>.
	InheritOutput bool
	// Handoff, in the process that a zero-downtime upgrade started, is
	// where the old process's workers listen (its Supervisor's Handoff):
	// each slot's worker starts on the slot's other address.
	Handoff *Handoff
}

func (c *WorkerConfig) count() int {
	if c.Count == 0 {
		return 1
	}
	return c.Count
}

func (c *WorkerConfig) startupTimeout() time.Duration {
	if c.StartupTimeout == 0 {
		return DefaultWorkerStartupTimeout
	}
	return c.StartupTimeout
}

func (c *WorkerConfig) stopTimeout() time.Duration {
	if c.StopTimeout == 0 {
		return DefaultWorkerStopTimeout
	}
	return c.StopTimeout
}

func (c *WorkerConfig) socketPath(i int) string {
	return filepath.Join(c.SocketDir, "worker-"+strconv.Itoa(i)+".sock")
}

// altSocketPath is where slot i's replacement listens in a rolling
// restart, when its worker is at socketPath (and the other way round).
func (c *WorkerConfig) altSocketPath(i int) string {
	return filepath.Join(c.SocketDir, "worker-"+strconv.Itoa(i)+".alt.sock")
}

// Validate reports the first invalid key of the [workers] table, wrapping
// ErrWorkerConfig.
func (c *WorkerConfig) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: workers.%s: %s", ErrWorkerConfig, key, fmt.Sprintf(format, args...))
	}
	switch {
	case len(c.Command) == 0 || c.Command[0] == "":
		return bad("command", "is required")
	case c.Count < 0:
		return bad("count", "must be >= 1, got %d", c.Count)
	case c.PortBase < 0 || c.PortBase+c.count()-1 > 65535:
		return bad("port_base", "%d workers from port %d exceed port 65535", c.count(), c.PortBase)
	case c.StartupTimeout < 0:
		return bad("startup_timeout", "must not be negative")
	case c.StopTimeout < 0:
		return bad("stop_timeout", "must not be negative")
	}
	if c.SocketDir != "" {
		if p := c.socketPath(c.count() - 1); len(p) > maxSocketPath {
			return bad("socket_dir", "socket path %q is longer than %d bytes", p, maxSocketPath)
		}
	}
	for k := range c.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return bad("env", "invalid variable name %q", k)
		}
	}
	if c.Dir != "" {
		if fi, err := os.Stat(c.Dir); err != nil {
			return bad("dir", "%v", err)
		} else if !fi.IsDir() {
			return bad("dir", "%s is not a directory", c.Dir)
		}
	}
	// The program must exist and be executable now, as exec will need it:
	// a bare name in $PATH, a path relative to Dir (as exec resolves it),
	// or an absolute path. One that goes missing later is a failed start,
	// retried with backoff.
	name := c.Command[0]
	if strings.Contains(name, "/") && !filepath.IsAbs(name) && c.Dir != "" {
		name = filepath.Join(c.Dir, name)
	}
	if _, err := exec.LookPath(name); err != nil {
		return bad("command", "%v", err)
	}
	return nil
}

// WorkerSlot is one supervised worker position. A slot keeps its name and
// address across restarts of its process.
type WorkerSlot struct {
	// Slot is the index, 0..Count-1, also given to the worker as
	// STICKYD_WORKER_ID.
	Slot int
	// Name is "worker-<i>".
	Name string
	// Address is "127.0.0.1:<port>" or "unix:<path>".
	Address string
}

// WorkerName is the backend name of worker slot i, "worker-<i>": the hash
// goes by it, so a client keeps its worker across restarts.
func WorkerName(i int) string { return "worker-" + strconv.Itoa(i) }

// workerTiming holds the supervisor's internal durations; tests shrink them.
type workerTiming struct {
	backoffMin  time.Duration // first restart delay
	backoffMax  time.Duration // restart delay cap
	stableAfter time.Duration // uptime (since ready) that resets the backoff
	readyPoll   time.Duration // interval between readiness dials
	dialTimeout time.Duration // bound of one readiness dial
	outputGrace time.Duration // wait for output pipes to drain after exit
	// misplacedAfter: a worker not ready this long after its start is
	// checked for a listener on another address (logged once)
	misplacedAfter time.Duration
	// retireAfter: how long a worker replaced in a rolling restart keeps
	// running, after its slot has moved, before it gets SIGTERM
	retireAfter time.Duration
	// memoryEvery: time between readings of the workers' memory;
	// memoryRetry: a slot's wait after a worker over MaxMemory was not
	// replaced (over it since its start) or its replacement failed
	memoryEvery, memoryRetry time.Duration
}

var defaultWorkerTiming = workerTiming{
	backoffMin:     100 * time.Millisecond,
	backoffMax:     30 * time.Second,
	stableAfter:    time.Minute,
	readyPoll:      50 * time.Millisecond,
	dialTimeout:    250 * time.Millisecond,
	outputGrace:    2 * time.Second,
	misplacedAfter: time.Second,
	retireAfter:    time.Second,
	memoryEvery:    5 * time.Second,
	memoryRetry:    time.Minute,
}

// supervisedWorker is the per-slot state. Only the slot's supervise
// goroutine touches it, except restarts and replacements (atomic), slot
// (Supervisor.mu) and replace (a channel).
type supervisedWorker struct {
	slot WorkerSlot
	// addrs are the slot's two addresses: its worker listens on
	// addrs[cur], and a rolling restart starts the replacement on the
	// other one (nil when the slot has none: altErr says why).
	addrs                  [2]*workerAddr
	cur                    int
	altErr                 error
	replace                chan chan error // rolling restart requests (RollingRestart)
	retiree                *workerProc     // the last process replaced, stopping or stopped
	everReady              bool            // a worker of the slot has been ready
	restarts, replacements atomic.Int64
	// pid is the ready worker's (0 while none is), rss its memory at the
	// last reading; memHigh tells serve of a reading over MaxMemory;
	// memRetryAt is when the slot may try a memory replacement again.
	pid, rss        atomic.Int64
	readySince      atomic.Int64 // unix nanoseconds; 0 while none is ready
	memHigh         chan memoryReading
	memRetryAt      time.Time
	memReplacedAt   time.Time // the last memory replacement
	memReplacements atomic.Int64
}

// setReady records p as w's ready worker (nil: none), whose memory the
// supervisor reads; a reading of an earlier process left pending is
// dropped.
func (w *supervisedWorker) setReady(p *workerProc) {
	var pid int64
	if p != nil {
		pid = int64(p.pid)
	}
	w.pid.Store(pid)
	w.rss.Store(0) // until the worker's own first reading
	var since int64
	if p != nil {
		since = time.Now().UnixNano()
	}
	w.readySince.Store(since)
	select {
	case <-w.memHigh:
	default:
	}
}

// at is the address w's worker listens on.
func (w *supervisedWorker) at() *workerAddr { return w.addrs[w.cur] }

// workerAddr is one address a worker may be told to listen on: the
// backend's address ("127.0.0.1:<port>" or "unix:<path>") as a dest.
type workerAddr struct {
	dest
	port     int // the TCP port; 0 with unix sockets
	reserved int // socket holding an automatic port until a worker first listens there; -1 when none
	env      []string
}

// unreserve closes the socket that reserves a's port, if any: a worker
// is about to listen there, or none ever will.
func (a *workerAddr) unreserve() {
	if a.reserved >= 0 {
		closeAll([]int{a.reserved})
		a.reserved = -1
	}
}

// Supervisor runs Count copies of a worker command, each on its own port or
// unix socket, reports when each one accepts connections, and restarts the
// ones that exit. It replaces node's cluster module for stickyd.
//
//	sup, err := backend.NewSupervisor(cfg, log, func(slot int, ready bool) {
//		pool.SetHealthy(slot, ready) // route to a slot only while ready
//	})
//	for _, s := range sup.Slots() { pool.Add(s.Name, s.Address) }
//	err = sup.Run(ctx) // returns once every worker has exited after ctx ends
//
// Process hygiene. Every worker runs in its own process group, so stopping
// or killing a worker reaches its children too, and the group is SIGKILLed
// once the worker itself has exited so that no straggler keeps the port.
// Each worker also gets Pdeathsig SIGKILL, so it dies with stickyd even when
// stickyd is SIGKILLed. Linux sends that signal when the OS thread that
// forked the child exits, not the process; Go may end a thread when a
// goroutine locked to it returns. So all workers are forked by one
// dedicated goroutine that calls runtime.LockOSThread and never unlocks: its
// thread lives exactly as long as Run, which waits for every worker to exit
// before letting it go. Pdeathsig reaches only the worker process, not its
// children; a worker that forks should forward the signal it gets or set
// its own parent-death signal.
type Supervisor struct {
	cfg     WorkerConfig
	log     *zap.Logger
	onState func(slot int, ready bool)
	onMove  func(slot int, address string)
	// onStartFailed is told of a slot whose first worker did not start.
	onStartFailed func(slot int)
	timing        workerTiming
	workers       []*supervisedWorker
	ran           atomic.Bool
	mu            sync.Mutex // guards each slot's Address
	// busy says what moves the workers now (busyNone, busyRolling,
	// busyHandoff, busyMemory): one thing at a time. retiring waits for
	// the replaced processes still stopping, and retirees counts them;
	// done is closed when Run returns.
	busy     atomic.Int32
	bus      *workerBus // the workers' bus (NodeIPC), or nil
	retiring sync.WaitGroup
	retirees atomic.Int32
	done     chan struct{}
}

// What moves the workers (Supervisor.busy).
const (
	busyNone    = iota
	busyRolling // RollingRestart
	busyHandoff // an upgrade holds them (Handoff)
	busyMemory  // one is replaced for its memory (replaceForMemory)
)

// NewSupervisor validates cfg and prepares one slot per worker; no process
// is started until Run. It settles the ports: with PortBase 0 it picks and
// reserves free ones (released as each worker first starts); with an
// explicit PortBase a port that another program holds is an error wrapping
// ErrWorkerPortInUse that names the port and the slot.
//
// log is used as given (stickyd names it "worker"): the supervisor's events
// and every line the workers print go there, each with the field
// worker=<slot>, output lines also with stream=stdout|stderr.
//
// onState, if not nil, is called with ready=true once a worker's address
// accepts connections and with ready=false as soon as that worker exits. It
// is called from the slot's own goroutine (calls for one slot are ordered,
// different slots may call concurrently) and must not block for long.
//
// The Supervisor keeps cfg (and its Env map) for its lifetime; the caller
// must not modify them.
func NewSupervisor(cfg WorkerConfig, log *zap.Logger, onState func(slot int, ready bool)) (*Supervisor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if onState == nil {
		onState = func(int, bool) {}
	}
	if log == nil {
		log = zap.NewNop()
	}
	// What the workers need is set up now, as their ports are reserved
	// below: a directory that cannot be made fails stickyd's start, instead
	// of leaving it serving with no worker.
	if cfg.SocketDir != "" {
		if err := os.MkdirAll(cfg.SocketDir, 0o700); err != nil {
			return nil, fmt.Errorf("%w: workers.socket_dir: %w", ErrWorkerConfig, err)
		}
	}
	if cfg.Handoff != nil {
		switch err := cfg.Handoff.fits(&cfg); {
		case err == nil:
		case cfg.PortBase == 0 && cfg.SocketDir == "" && cfg.Handoff.Base != 0:
			// Automatic ports before and now: a block of free ones, apart
			// from the old workers', serves another count as well.
			log.Info("upgrade: the worker count changed; the new workers start on new ports",
				zap.Int("before", len(cfg.Handoff.Cur)), zap.Int("now", cfg.count()))
			cfg.Handoff = nil
		default:
			return nil, fmt.Errorf("%w: upgrade: %w; restart instead", ErrWorkerConfig, err)
		}
	}
	ports, err := cfg.ports()
	if err != nil {
		return nil, err
	}
	s := &Supervisor{cfg: cfg, log: log, onState: onState, onMove: func(int, string) {}, onStartFailed: func(int) {},
		timing: defaultWorkerTiming,
		done:   make(chan struct{})}
	if cfg.NodeIPC {
		s.bus = newWorkerBus(log)
	}
	base := cfg.baseEnv()
	n := cfg.count()
	for i := range n {
		w := &supervisedWorker{slot: WorkerSlot{Slot: i, Name: WorkerName(i)}, replace: make(chan chan error, 1),
			memHigh: make(chan memoryReading, 1)}
		env := append([]string(nil), base...)
		env = append(env, "STICKYD_WORKER_ID="+strconv.Itoa(i), "STICKYD_WORKERS="+strconv.Itoa(n))
		if cfg.SocketDir != "" {
			w.addrs[0] = unixWorkerAddr(cfg.socketPath(i), env)
			if alt := cfg.altSocketPath(i); len(alt) > maxSocketPath {
				w.altErr = fmt.Errorf("its second socket path %q is longer than %d bytes (fix: a shorter workers.socket_dir)", alt, maxSocketPath)
			} else {
				w.addrs[1] = unixWorkerAddr(alt, env)
			}
		} else {
			w.addrs[0] = tcpWorkerAddr(ports[i], env)
			if alt := ports[n+i]; alt.port > 65535 {
				w.altErr = fmt.Errorf("its second port, port_base + count + %d = %d, is beyond 65535 (fix: a lower workers.port_base)", i, alt.port)
			} else {
				w.addrs[1] = tcpWorkerAddr(alt, env)
			}
		}
		if cfg.Handoff != nil { // the old process's worker is on the other address
			w.cur = 1 - cfg.Handoff.Cur[i]
			if w.addrs[w.cur] == nil {
				return nil, fmt.Errorf("%w: upgrade: worker-%d has no address beside the running one's: %w; restart instead", ErrWorkerConfig, i, w.altErr)
			}
		}
		w.slot.Address = w.addrs[w.cur].address
		s.workers = append(s.workers, w)
	}
	return s, nil
}

// workerPort is a slot's TCP port and, for an automatic one, the socket
// that reserves it (-1: none).
type workerPort struct{ port, reserved int }

func tcpWorkerAddr(p workerPort, env []string) *workerAddr {
	env = append(env[:len(env):len(env)], "PORT="+strconv.Itoa(p.port))
	return &workerAddr{dest: *newDest("127.0.0.1:" + strconv.Itoa(p.port)), port: p.port, reserved: p.reserved, env: env}
}

func unixWorkerAddr(path string, env []string) *workerAddr {
	env = append(env[:len(env):len(env)], "SOCKET="+path)
	return &workerAddr{dest: *newDest("unix:" + path), reserved: -1, env: env}
}

// ports returns 2 x count TCP ports (nil with SocketDir): slot i's at i,
// and at count+i the one its replacement gets in a rolling restart (then
// they swap). Automatic ports are one block of free ones, all reserved;
// with PortBase the first count are checked now, the others when a
// rolling restart needs them.
func (c *WorkerConfig) ports() ([]workerPort, error) {
	if c.SocketDir != "" {
		return nil, nil
	}
	n := c.count()
	ports := make([]workerPort, 2*n)
	if h := c.Handoff; h != nil { // the old process's block: half of it is its workers'
		base := c.PortBase
		if base == 0 {
			base = h.Base
		}
		for i := range ports {
			ports[i] = workerPort{base + i, -1}
		}
		return ports, nil
	}
	if c.PortBase == 0 {
		base, reserved, err := reservePorts(2 * n)
		if err != nil {
			return nil, err
		}
		for i := range ports {
			ports[i] = workerPort{base + i, reserved[i]}
		}
		return ports, nil
	}
	for i := range ports {
		ports[i] = workerPort{c.PortBase + i, -1}
		if i >= n {
			continue
		}
		if err := checkWorkerPort(c.PortBase + i); err != nil {
			return nil, fmt.Errorf("worker-%d (port_base %d + %d): %w", i, c.PortBase, i, err)
		}
	}
	return ports, nil
}

// baseEnv is the inherited environment plus c.Env, without the variables
// the supervisor sets itself.
func (c *WorkerConfig) baseEnv() []string {
	reserved := func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PORT", "SOCKET", "STICKYD_WORKER_ID", "STICKYD_WORKERS":
			return true
		case "NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "STICKYD_IPC":
			// The workers' bus sets them (workers_bus.go); inherited (stickyd
			// started by a Node process) they would name a descriptor the
			// worker does not have.
			return true
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES":
			// systemd's, for stickyd's unit: a worker that speaks sd_notify
			// would report the service ready (or kill it by its watchdog).
			return true
		}
		return false
	}
	var env []string
	for _, kv := range os.Environ() {
		if !reserved(kv) {
			env = append(env, kv)
		}
	}
	keys := make([]string, 0, len(c.Env))
	for k := range c.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if kv := k + "=" + c.Env[k]; !reserved(kv) {
			env = append(env, kv)
		}
	}
	return env
}

// Slots returns a copy of the worker slots, in slot order, each with the
// address its worker listens on now.
func (s *Supervisor) Slots() []WorkerSlot {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]WorkerSlot, len(s.workers))
	for i, w := range s.workers {
		out[i] = w.slot
	}
	return out
}

// Restarts returns how many times the slot's worker has been restarted
// (after a crash, a failed start or a startup timeout); 0 for an unknown
// slot. Safe to call concurrently with Run.
func (s *Supervisor) Restarts(slot int) int64 {
	if slot < 0 || slot >= len(s.workers) {
		return 0
	}
	return s.workers[slot].restarts.Load()
}

// Run starts all workers and supervises them until ctx is cancelled; then
// it stops them all (SIGTERM to each process group, SIGKILL after
// StopTimeout) and returns nil once every one has exited and its output has
// been forwarded. Run may be called only once.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return ErrSupervisorRunning
	}
	defer close(s.done)
	sp := startWorkerSpawner()
	defer sp.stop()
	var wg sync.WaitGroup
	for _, w := range s.workers {
		wg.Go(func() { s.supervise(ctx, sp, w) })
	}
	wg.Go(func() { s.watchMemory(ctx) })
	wg.Wait()
	s.retiring.Wait()
	s.mu.Lock() // Handoff may give reservations up meanwhile
	defer s.mu.Unlock()
	for _, w := range s.workers {
		for _, a := range w.addrs {
			if a != nil { // a reservation left: no worker listened there
				a.unreserve()
			}
		}
	}
	return nil
}

// supervise runs one slot: start, wait, restart with backoff, until ctx ends.
func (s *Supervisor) supervise(ctx context.Context, sp *workerSpawner, w *supervisedWorker) {
	var backoff time.Duration
	for ctx.Err() == nil {
		up := s.runOnce(ctx, sp, w)
		if ctx.Err() != nil {
			return
		}
		if up == 0 && !w.everReady {
			s.onStartFailed(w.slot.Slot)
		}
		backoff = s.timing.nextBackoff(backoff, up)
		n := w.restarts.Add(1)
		s.log.Info("restarting worker", zap.Int("worker", w.slot.Slot),
			zap.Duration("backoff", backoff), zap.Int64("restarts", n))
		t := time.NewTimer(backoff)
		for waiting := true; waiting; {
			select {
			case <-t.C:
				waiting = false
			case done := <-w.replace: // down: its next start runs the command as it is now
				done <- errWorkerDown
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}
}

// nextBackoff doubles prev from backoffMin up to backoffMax, starting over
// when the last run stayed ready for stableAfter.
func (t workerTiming) nextBackoff(prev, up time.Duration) time.Duration {
	if prev == 0 || up >= t.stableAfter {
		return t.backoffMin
	}
	return min(2*prev, t.backoffMax)
}

// runOnce starts w's process and returns once it has exited, reporting its
// workerReadiness on the way. It returns how long the worker was ready.
func (s *Supervisor) runOnce(ctx context.Context, sp *workerSpawner, w *supervisedWorker) time.Duration {
	s.answerPending(w) // this start runs the command as it is now
	a := w.at()
	p, err := s.spawn(sp, w, a)
	if errors.Is(err, ErrWorkerPortInUse) {
		fix := "stop the program that holds the port, or choose another port_base (unset, stickyd picks free ports)"
		if s.cfg.PortBase == 0 { // stickyd picked it, free at start
			fix = "stickyd picked this port at start, free then; another program has taken it since: stop that program, or restart stickyd (it picks free ports again)"
		}
		s.log.Error("worker port in use by another program; worker not started",
			zap.Int("worker", w.slot.Slot), zap.String("address", a.address), zap.Error(err), zap.String("fix", fix))
		return 0
	}
	if err != nil {
		s.log.Error("start worker", zap.Int("worker", w.slot.Slot), zap.Error(err),
			zap.String("fix", "workers.command must name a program that exists and that stickyd's user may run (it did at start); stickyd retries with backoff"))
		return 0
	}
	log := s.log.With(zap.Int("worker", w.slot.Slot), zap.Int("pid", p.pid))
	var readyAt time.Time
	switch s.awaitReady(ctx, a, p, log) {
	case workerReady:
		readyAt = time.Now()
		w.everReady = true
		log.Info("worker ready", zap.String("address", a.address),
			zap.Duration("startup", readyAt.Sub(p.started)))
		s.onState(w.slot.Slot, true)
		w.setReady(p)
		p, log, readyAt = s.serve(ctx, sp, w, p, log, readyAt)
		w.setReady(nil)
		s.onState(w.slot.Slot, false)
	case workerStartTimeout:
		log.Error("worker not ready within startup timeout, killing it",
			zap.Duration("startup_timeout", s.cfg.startupTimeout()), zap.String("address", a.address),
			zap.String("expected", s.expectation(a)), zap.Strings("listening_on", listeningAddrs(p.pid)))
		p.signal(syscall.SIGKILL)
		<-p.exited
	case workerStartCancelled:
		p.stop(log, s.cfg.stopTimeout())
	case workerExitedEarly:
		log = log.With(zap.Bool("ready", false), zap.String("expected", s.expectation(a)))
	}
	p.cleanup(s.timing.outputGrace)
	p.logExit(log, ctx.Err() != nil)
	if readyAt.IsZero() {
		return 0
	}
	return time.Since(readyAt)
}

// serve waits while w's ready worker p runs: until it exits, or ctx ends
// (it is then stopped). A rolling restart meanwhile replaces p (replace);
// serve returns the process that ran last, its logger and when it became
// ready.
func (s *Supervisor) serve(ctx context.Context, sp *workerSpawner, w *supervisedWorker, p *workerProc, log *zap.Logger, readyAt time.Time) (*workerProc, *zap.Logger, time.Time) {
	for {
		select {
		case <-p.exited:
			return p, log, readyAt
		case <-ctx.Done():
			p.stop(log, s.cfg.stopTimeout())
			return p, log, readyAt
		case done := <-w.replace:
			np, nlog, err := s.replaceWorker(ctx, sp, w, p, log, "rolling restart")
			if err == nil {
				w.replacements.Add(1)
				p, log, readyAt = np, nlog, time.Now()
				w.setReady(p)
			}
			done <- err
		case m := <-w.memHigh:
			if np, nlog, ok := s.replaceForMemory(ctx, sp, w, p, log, m); ok {
				p, log, readyAt = np, nlog, time.Now()
				w.setReady(p)
			}
		}
	}
}

// expectation says what stickyd waits for from a worker told to listen at
// a, for log lines about a worker that is not ready.
func (s *Supervisor) expectation(a *workerAddr) string {
	if a.network == "unix" {
		return "listen on the Unix socket $SOCKET=" + a.addr + " within startup_timeout"
	}
	return "listen on 127.0.0.1:$PORT (PORT=" + strconv.Itoa(a.port) + ") within startup_timeout"
}

// workerReadiness is how awaitReady ended.
type workerReadiness int

const (
	workerReady workerReadiness = iota
	workerExitedEarly
	workerStartTimeout
	workerStartCancelled
)

// awaitReady dials w's address every readyPoll until it accepts a
// connection, the process exits, StartupTimeout passes or ctx ends. A
// worker found listening elsewhere meanwhile is logged once.
func (s *Supervisor) awaitReady(ctx context.Context, a *workerAddr, p *workerProc, log *zap.Logger) workerReadiness {
	timeout := time.NewTimer(s.cfg.startupTimeout())
	defer timeout.Stop()
	tick := time.NewTicker(s.timing.readyPoll)
	defer tick.Stop()
	look := time.Now().Add(s.timing.misplacedAfter) // next look for a listener elsewhere; zero once found
	for {
		select {
		case <-p.exited:
			return workerExitedEarly
		case <-ctx.Done():
			return workerStartCancelled
		case <-timeout.C:
			return workerStartTimeout
		case <-tick.C:
		}
		if s.accepting(a) {
			return workerReady
		}
		if !look.IsZero() && time.Now().After(look) {
			look = time.Now().Add(time.Second) // /proc is scanned at most once a second
			if addrs := listeningAddrs(p.pid); len(addrs) > 0 {
				log.Warn("worker listens, but not on its address; it gets no traffic until it does",
					zap.String("address", a.address), zap.Strings("listening_on", addrs),
					zap.String("expected", s.expectation(a)))
				look = time.Time{}
			}
		}
	}
}
