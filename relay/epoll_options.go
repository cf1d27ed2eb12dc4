package relay

import (
	"runtime"
	"time"
)

// EpollOptions configures NewEpollEngine. The zero value is ready to use:
// every zero field means the default documented on it, resolved by the
// accessors below and never written back.
type EpollOptions struct {
	// Loops is the number of event loops, each one goroutine with its own
	// epoll set. Zero means runtime.GOMAXPROCS(0).
	Loops int
	// BufferSize is the size of each loop's shared read buffer. Small
	// transfers go through it with read(2)/write(2); a read that fills it
	// switches that direction to splice(2) until the source is drained.
	// Zero means 64 KiB.
	BufferSize int
	// PipeSize is the capacity asked of each splice pipe (F_SETPIPE_SZ).
	// Zero means 1 MiB, as Go's own splice does; the kernel may give less
	// (fs.pipe-max-size, pipe-user-pages-soft).
	PipeSize int
	// PoolPipes is how many idle pipes each loop keeps for the next bulk
	// transfer; pipes past that are closed when their transfer ends.
	// Zero means 4; negative means none (every pipe is closed after use).
	PoolPipes int
	// MaxPipes caps the splice pipes the whole engine holds at once, in use
	// or pooled (2 descriptors each): a bulk direction that finds none left
	// copies through its loop's buffer instead, slower but correct. Count
	// 2*MaxPipes descriptors on top of the 2 per pair when sizing a
	// connection cap. Zero means 256; negative means none (no splice).
	MaxPipes int
	// InlineDone runs Pair.Done on the loop itself, after each batch of
	// events, instead of on a notifier goroutine per loop: below
	// saturation that saves a goroutine wake-up (and often a thread
	// wake-up) per connection. Done must then return at once and never
	// block or call the engine: it holds up every pair of its loop.
	InlineDone bool
	// Tick is the resolution of idle and linger timeouts: a timeout fires
	// between its duration and its duration plus Tick late. Zero means 50ms.
	Tick time.Duration

	// balance, when set, replaces the defaults of the load balancing
	// between loops (epoll_move.go): tests make it eager.
	balance *epBalance
}

// epBalance tunes the load balancing between loops: the window over which
// loops weigh their busy clocks, and the busy shares, per mille, past
// which a loop sheds pairs (see weigh).
type epBalance struct {
	window            int64 // ns
	shedBusy, shedGap int64
}

func (o EpollOptions) loops() int {
	if o.Loops > 0 {
		return o.Loops
	}
	return runtime.GOMAXPROCS(0)
}

func (o EpollOptions) bufferSize() int {
	if o.BufferSize > 0 {
		return o.BufferSize
	}
	return 64 << 10
}

func (o EpollOptions) pipeSize() int {
	if o.PipeSize > 0 {
		return o.PipeSize
	}
	return 1 << 20
}

func (o EpollOptions) poolPipes() int {
	switch {
	case o.PoolPipes > 0:
		return o.PoolPipes
	case o.PoolPipes < 0:
		return 0
	}
	return 4
}

func (o EpollOptions) maxPipes() int32 {
	switch {
	case o.MaxPipes > 0:
		return int32(min(o.MaxPipes, 1<<30))
	case o.MaxPipes < 0:
		return 0
	}
	return DefaultMaxPipes
}

// DefaultMaxPipes is EpollOptions.MaxPipes when zero.
const DefaultMaxPipes = 256

func (o EpollOptions) tick() time.Duration {
	if o.Tick > 0 {
		return o.Tick
	}
	return 50 * time.Millisecond
}
