// Package backend owns stickyd's backends: the set the balancer chooses from,
// their state (up, cooling down after failed dials, draining, not ready,
// failing active health checks), dialing with a timeout and fail-over along
// a client IP's preference order, active health checks (health.go), and the
// worker processes stickyd may launch itself (workers.go).
//
//	set, _ := backend.NewSet(backends, backend.Options{DialTimeout: 5 * time.Second}, log)
//	b, conn, err := set.Dial(ctx, clientIP) // conn is the caller's to close; call b.Release() when done
package backend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stickyd/stickyd/balancer"
	"go.uber.org/zap"
)

// ErrNoBackend is returned by Dial when no backend accepted the connection.
var ErrNoBackend = errors.New("backend: no backend available")

// ErrNoDescriptors is returned by Dial when this process (EMFILE) or the
// system (ENFILE) is out of file descriptors: no backend is at fault, none
// is counted as failed, and no other is tried.
var ErrNoDescriptors = errors.New("backend: out of file descriptors")

// localDialFailure reports whether a dial failed for want of a local
// resource rather than because of the backend.
func localDialFailure(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// Spec describes one backend.
type Spec struct {
	Name    string
	Address string // host:port or unix:/path
	Weight  int    // 0 means 1; read it from Set.Weight, which follows reloads
	// NotReady starts the backend out of rotation until SetReady(true)
	// (launched workers, health checks).
	NotReady bool
}

// Backend is one backend and its live state. Its methods are safe for
// concurrent use.
type Backend struct {
	Spec
	// dest is where the backend is dialed now: Spec.Address, or, for a
	// launched worker after a rolling restart, the address its replacement
	// listens on (SetAddress). Spec.Address stays what the backend was
	// made with, so that a reload recognises it.
	dest atomic.Pointer[dest]

	ready      atomic.Bool
	unhealthy  atomic.Bool // set by active health checks; zero value: healthy
	draining   atomic.Bool
	downUntil  atomic.Int64 // unix nanos; passive cool-down after failed dials
	failStreak atomic.Int64 // consecutive failed dials
	active     atomic.Int64
	total      atomic.Int64
	failures   atomic.Int64
	// ejected is set by a cool-down and cleared by the next successful
	// dial: once the cool-down is over, one dial at a time (probing) tries
	// the backend while other clients go to their next choice.
	ejected atomic.Bool
	probing atomic.Bool
	// dialing is when a dial now in flight began (unix nanos; 0: none):
	// while it is slow (see slowDial), other clients skip the backend.
	dialing atomic.Int64
	// Connections the backend closed before its first byte, or left
	// silent past the first-byte timeout (see Set.ClosedEarly).
	earlyStreak atomic.Int64 // in a row; a connection it answers resets it
	earlyCloses atomic.Int64
	silent      atomic.Int64
	goodAnswer  atomic.Bool // the last connection it answered began with good bytes
}

// Active returns the number of open connections to the backend.
func (b *Backend) Active() int64 { return b.active.Load() }

// Total returns the number of connections ever made to the backend.
func (b *Backend) Total() int64 { return b.total.Load() }

// DialFailures returns the number of failed dials.
func (b *Backend) DialFailures() int64 { return b.failures.Load() }

// EarlyCloses returns the number of relayed connections the backend closed
// or reset before sending a byte (while the client was still there).
func (b *Backend) EarlyCloses() int64 { return b.earlyCloses.Load() }

// FirstByteTimeouts returns the number of relayed connections closed
// because the backend sent nothing within the first-byte timeout.
func (b *Backend) FirstByteTimeouts() int64 { return b.silent.Load() }

// NoteAnswer records whether a relayed connection's backend began with a
// good answer (bytes other than an HTTP 400 status) and returns whether the
// previous connection's did (false for the first). The server uses it to
// tell a backend that never understood its PROXY header from one that met
// a bad request.
func (b *Backend) NoteAnswer(good bool) (prevGood bool) {
	if b.goodAnswer.Load() == good {
		return good
	}
	return b.goodAnswer.Swap(good)
}

// Release records that a connection obtained from Set.Dial has closed.
func (b *Backend) Release() { b.active.Add(-1) }

// SetReady puts the backend in (true) or out of (false) rotation. The
// worker supervisor owns this flag for launched workers; static backends are
// always ready.
// A backend that becomes ready (a restarted worker) also leaves any
// cool-down from dials that failed while it was away.
func (b *Backend) SetReady(ready bool) {
	if ready {
		b.downUntil.Store(0)
		b.ejected.Store(false)
		b.earlyStreak.Store(0)
	}
	b.ready.Store(ready)
}

// Ready reports the flag set by SetReady.
func (b *Backend) Ready() bool { return b.ready.Load() }

// SetHealthy records the verdict of active health checks (the
// HealthChecker owns this flag). A backend starts healthy. It takes new
// connections only while it is both ready and healthy.
func (b *Backend) SetHealthy(healthy bool) { b.unhealthy.Store(!healthy) }

// Healthy reports the flag set by SetHealthy.
func (b *Backend) Healthy() bool { return !b.unhealthy.Load() }

// SetDraining stops (true) or resumes (false) new connections to the backend;
// open ones are untouched.
func (b *Backend) SetDraining(d bool) { b.draining.Store(d) }

// Draining reports the flag set by SetDraining.
func (b *Backend) Draining() bool { return b.draining.Load() }

// Backend states returned by State.
const (
	StateUp        = "up"
	StateDown      = "down"      // not ready (a launched worker not accepting yet)
	StateUnhealthy = "unhealthy" // failing active health checks
	StateCooldown  = "cooldown"  // ejected after failed dials
	StateDraining  = "draining"  // no new connections, open ones finish
)

// States lists every value State returns.
var States = []string{StateUp, StateDown, StateUnhealthy, StateCooldown, StateDraining}

// State is one of the State* constants; the first that applies wins, in the
// order draining, down, unhealthy, cooldown, up.
func (b *Backend) State() string {
	switch {
	case b.draining.Load():
		return StateDraining
	case !b.ready.Load():
		return StateDown
	case b.unhealthy.Load():
		return StateUnhealthy
	case time.Now().UnixNano() < b.downUntil.Load():
		return StateCooldown
	}
	return StateUp
}

// Up reports whether the backend takes new connections now.
func (b *Backend) Up() bool { return b.State() == StateUp }

// Options tune a Set. Zero values mean the documented defaults.
type Options struct {
	DialTimeout time.Duration // default 5s
	Cooldown    time.Duration // passive ejection after failed dials, default 5s
	// EjectAfter is how many consecutive failed dials put a backend in
	// Cooldown; default 1.
	EjectAfter int
	// EjectAfterCloses is how many relayed connections in a row the
	// backend may close before its first byte (or leave silent past the
	// first-byte timeout) before it goes in Cooldown; default 3. A
	// connection it answers resets the count.
	EjectAfterCloses int
	// BalanceFactor > 1 caps each backend at ceil(factor x its weighted share
	// of the usable backends' active connections), the rule of
	// balancer.Table.PickBounded; 0 disables the cap. Only when no backend
	// is up does the last resort ignore it.
	BalanceFactor float64
	Balancer      balancer.Options
	// IsSelf, if set, tells whether an address is the caller's own
	// listener: a backend host name that resolves to it fails the dial
	// (ErrSelfLoop) instead of looping.
	IsSelf func(netip.AddrPort) bool
}

func (o Options) dialTimeout() time.Duration { return orDefault(o.DialTimeout, 5*time.Second) }
func (o Options) cooldown() time.Duration    { return orDefault(o.Cooldown, 5*time.Second) }
func (o Options) ejectAfter() int64          { return int64(max(o.EjectAfter, 1)) }

// slowDial is how long a dial may be in flight before other clients skip
// its backend until it ends: a second, or half the dial timeout if shorter.
func (o Options) slowDial() time.Duration { return min(time.Second, o.dialTimeout()/2) }
func (o Options) ejectAfterCloses() int64 {
	if o.EjectAfterCloses <= 0 {
		return 3
	}
	return int64(o.EjectAfterCloses)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Set is an immutable list of backends with their balancer table. The
// backends' state changes; the membership does not (a reload builds a new Set,
// which may share Backend values with the old one).
type Set struct {
	backends []*Backend
	table    *balancer.Table
	weights  []int // per backend, >= 1; a reload may change them
	opts     Options
	log      *zap.Logger
}

// NewSet builds a Set. The Backend values in reuse whose name and address
// match a spec are kept (with their state and counters), so a reload does
// not reset them.
func NewSet(specs []Spec, opts Options, log *zap.Logger, reuse ...*Backend) (*Set, error) {
	old := make(map[string]*Backend, len(reuse))
	for _, b := range reuse {
		old[b.Name+"\x00"+b.Address] = b
	}
	s := &Set{opts: opts, log: log}
	entries := make([]balancer.Backend, len(specs))
	for i, sp := range specs {
		b, ok := old[sp.Name+"\x00"+sp.Address]
		if !ok {
			var err error
			if b, err = newBackend(sp); err != nil {
				return nil, err
			}
		}
		w := max(sp.Weight, 1)
		s.backends = append(s.backends, b)
		s.weights = append(s.weights, w)
		entries[i] = balancer.Backend{Name: sp.Name, Weight: w}
	}
	table, err := balancer.New(entries, opts.Balancer)
	if err != nil {
		return nil, err
	}
	s.table = table
	return s, nil
}

func newBackend(sp Spec) (*Backend, error) {
	b := &Backend{Spec: sp}
	b.dest.Store(newDest(sp.Address))
	b.ready.Store(!sp.NotReady)
	return b, nil
}

// dest is a backend's address, as configured ("host:port" or
// "unix:/path") and as dialed.
type dest struct {
	address, network, addr string
}

func newDest(address string) *dest {
	if path, ok := strings.CutPrefix(address, "unix:"); ok {
		return &dest{address, "unix", path}
	}
	return &dest{address, "tcp", address}
}

// Addr returns the address the backend is dialed at now: Spec.Address
// until SetAddress moves it.
func (b *Backend) Addr() string { return b.dest.Load().address }

// SetAddress moves the backend to address ("host:port" or "unix:/path"):
// the next dials and health checks go there, while connections already
// made stay where they are. The worker supervisor moves a slot to its
// replacement's address in a rolling restart. A dial to the old address
// that fails once the backend has moved does not count against it.
func (b *Backend) SetAddress(address string) {
	b.dest.Store(newDest(address))
	b.failStreak.Store(0)
}

// Weight returns backend i's weight in this set.
func (s *Set) Weight(i int) int { return s.weights[i] }

// Backends returns the set's backends in configuration order.
func (s *Set) Backends() []*Backend { return s.backends }

// ByName returns the backend called name, or nil.
func (s *Set) ByName(name string) *Backend {
	for _, b := range s.backends {
		if b.Name == name {
			return b
		}
	}
	return nil
}

// Lookup returns the backend that ip gets now (state and load considered),
// or nil when none is up.
func (s *Set) Lookup(ip netip.Addr) *Backend {
	f := s.filter(nil, true)
	if i := s.pick(ip, &f); i >= 0 {
		return s.backends[i]
	}
	return nil
}

// Preferred returns the backend ip gets when every backend is up.
func (s *Set) Preferred(ip netip.Addr) *Backend {
	return s.backends[s.table.Pick(ip, nil)]
}

// pickFilter is the predicate for a pick: not yet tried, and either up
// (strict) or at least not draining/down (last resort: cool-down and failed
// health checks ignored, since a dial will tell). A struct with a method,
// not a returned closure: the balancer does not keep the predicate, so a
// pickFilter and its tried list stay on the caller's stack.
type pickFilter struct {
	s      *Set
	tried  []int
	strict bool
	now    int64
}

func (s *Set) filter(tried []int, strict bool) pickFilter {
	return pickFilter{s: s, tried: tried, strict: strict, now: time.Now().UnixNano()}
}

func (f *pickFilter) ok(i int) bool {
	for _, t := range f.tried {
		if t == i {
			return false
		}
	}
	b := f.s.backends[i]
	if b.draining.Load() || !b.ready.Load() {
		return false
	}
	if !f.strict {
		return true
	}
	if b.unhealthy.Load() || f.now < b.downUntil.Load() || b.probing.Load() {
		return false
	}
	if d := b.dialing.Load(); d != 0 && f.now-d > int64(f.s.opts.slowDial()) {
		return false // a dial is stuck there: it decides, others go on
	}
	return true
}

// pick returns the index of ip's backend among those f accepts, or -1.
// Strict picks apply bounded load (Options.BalanceFactor) by the balancer's
// rule, balancer.Table.PickBounded: shares of the usable backends' weight
// and connections. The last resort ignores the bound.
func (s *Set) pick(ip netip.Addr, f *pickFilter) int {
	if !f.strict || s.opts.BalanceFactor <= 1 {
		return s.table.Pick(ip, f.ok)
	}
	return s.table.PickBounded(ip, f.ok, f.active, f.usableActive(), s.opts.BalanceFactor)
}

// active returns backend i's number of relayed connections.
func (f *pickFilter) active(i int) int64 { return f.s.backends[i].active.Load() }

// usableActive returns the connections on the backends f accepts: the
// total that bounded load shares out.
func (f *pickFilter) usableActive() int64 {
	var total int64
	for i, b := range f.s.backends {
		if f.ok(i) {
			total += b.active.Load()
		}
	}
	return total
}

// Dial connects to ip's backend. It walks ip's preference order: backends
// that are down, draining, unhealthy or cooling down are skipped; a refused or
// timed-out dial is tried on the next one, and Options.EjectAfter such
// failures in a row put the backend in cool-down. Only when no backend is up
// are the unhealthy and cooling-down ones tried regardless. On success the
// caller owns conn and must call b.Release() once it is closed.
func (s *Set) Dial(ctx context.Context, ip netip.Addr) (b *Backend, conn net.Conn, err error) {
	return s.DialWith(ctx, ip, nil)
}

// DialFunc connects to address (network as for net.Dial) within timeout,
// unless ctx ends first. It may return an error wrapping ErrWouldBlock
// instead, when it only connects without waiting (a server's event loop)
// and this connection would wait.
type DialFunc func(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error)

// ErrWouldBlock, from a DialFunc, says that it cannot make this connection
// without waiting. DialWith then returns it at once, having counted
// nothing against the backend: the caller dials again from where it may
// wait.
var ErrWouldBlock = errors.New("backend: the dial would wait")

// dialNet is the DialFunc of Dial: a net.Dialer.
func dialNet(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// DialWith is Dial with dial making the connections (nil: a net.Dialer).
// The server passes its relay engine's dialer, whose sockets the engine
// adopts without system calls.
func (s *Set) DialWith(ctx context.Context, ip netip.Addr, dial DialFunc) (b *Backend, conn net.Conn, err error) {
	var triedBuf [8]int
	tried := triedBuf[:0]
	var errs dialErrors
	for _, strict := range []bool{true, false} {
		for {
			f := s.filter(tried, strict)
			i := s.pick(ip, &f)
			if i < 0 {
				break
			}
			tried = append(tried, i)
			b = s.backends[i]
			probe := strict && b.ejected.Load()
			if probe && !b.probing.CompareAndSwap(false, true) {
				// Another client's dial probes it: the strict filter now
				// skips it, and the last resort may still try it.
				tried = tried[:len(tried)-1]
				continue
			}
			conn, err = s.dialOne(ctx, b, dial, probe, f.now)
			if err == nil {
				return b, conn, nil
			}
			if errors.Is(err, ErrWouldBlock) {
				return nil, nil, err
			}
			errs.add(err)
			if ctx.Err() != nil || errors.Is(err, ErrNoDescriptors) {
				return nil, nil, errs.err(false)
			}
		}
	}
	if errs.n == 0 {
		return nil, nil, ErrNoBackend
	}
	return nil, nil, errs.err(true)
}

// dialOne dials b. A probe is the one dial allowed to a backend whose
// cool-down is over (b.probing is held): while it runs, other clients skip
// b, so that a backend that never answers (a full backlog, a black hole)
// costs one client the connect timeout per cool-down, not every client.
// Likewise a dial in flight for longer than slowDial (b.dialing, set by the
// first of concurrent dials) makes the next clients skip b until it ends.
func (s *Set) dialOne(ctx context.Context, b *Backend, dial DialFunc, probe bool, now int64) (net.Conn, error) {
	if dial == nil {
		dial = dialNet
	}
	if probe {
		defer b.probing.Store(false)
	}
	if b.dialing.Load() == 0 && b.dialing.CompareAndSwap(0, now) {
		defer b.dialing.Store(0)
	}
	d := b.dest.Load()
	conn, err := dial(ctx, d.network, d.addr, s.opts.dialTimeout())
	if errors.Is(err, ErrWouldBlock) {
		return nil, err
	}
	if err != nil && b.dest.Load() != d { // moved meanwhile (a rolling restart): not the backend's failure
		return nil, fmt.Errorf("dial backend %s: %w (it has moved to %s since)", b.Name, err, b.Addr())
	}
	if err != nil && localDialFailure(err) {
		return nil, fmt.Errorf("dial backend %s: %w: %w", b.Name, ErrNoDescriptors, err)
	}
	if err == nil {
		err = s.notSelf(b, conn)
	}
	if err != nil {
		b.failures.Add(1)
		fix := zap.Skip()
		if f := dialFix(err, d.network, d.addr); f != "" {
			fix = zap.String("fix", f)
		}
		if n := b.failStreak.Add(1); n >= s.opts.ejectAfter() {
			s.coolDown(b)
			s.log.Warn("backend dial failed; cooling down",
				zap.String("backend", b.Name), zap.String("address", d.address),
				zap.Int64("failures_in_a_row", n), zap.Duration("cooldown", s.opts.cooldown()), zap.Error(err), fix)
		} else {
			s.log.Warn("backend dial failed", zap.String("backend", b.Name), zap.String("address", d.address),
				zap.Int64("failures_in_a_row", n), zap.Error(err), fix)
		}
		return nil, fmt.Errorf("dial backend %s: %w", b.Name, err)
	}
	if b.failStreak.Load() != 0 {
		b.failStreak.Store(0)
	}
	if b.ejected.Load() && b.ejected.Swap(false) {
		s.log.Info("backend accepts connections again after its cool-down", zap.String("backend", b.Name),
			zap.String("address", d.address), zap.Bool("probe", probe))
	}
	b.active.Add(1)
	b.total.Add(1)
	return conn, nil
}

// coolDown takes b out of rotation for the cool-down; afterwards one probe
// dial at a time tries it (see dialOne).
func (s *Set) coolDown(b *Backend) {
	b.ejected.Store(true)
	b.downUntil.Store(time.Now().Add(s.opts.cooldown()).UnixNano())
}

// Answered records that a relayed connection's backend sent bytes: its
// count of early closes in a row starts again.
func (s *Set) Answered(b *Backend) {
	if b.earlyStreak.Load() != 0 {
		b.earlyStreak.Store(0)
	}
}

// ClosedEarly records a relayed connection that b closed or reset before
// its first byte while the client was still there, or (silent) left without
// a byte past the first-byte timeout: such a backend accepts connections
// but serves none. Options.EjectAfterCloses of them in a row put b in
// cool-down, like failed dials; the first one after a cool-down puts it
// back at once.
func (s *Set) ClosedEarly(b *Backend, silent bool) {
	what := "closed before its first byte"
	if silent {
		b.silent.Add(1)
		what = "sent nothing within the first-byte timeout"
	} else {
		b.earlyCloses.Add(1)
	}
	n := b.earlyStreak.Add(1)
	if n < s.opts.ejectAfterCloses() || time.Now().UnixNano() < b.downUntil.Load() {
		return
	}
	s.coolDown(b)
	s.log.Warn("backend accepts connections but "+what+"; cooling down",
		zap.String("backend", b.Name), zap.String("address", b.Addr()),
		zap.Int64("in_a_row", n), zap.Duration("cooldown", s.opts.cooldown()))
}
