package logging

import (
	"sync/atomic"

	"go.uber.org/zap/zapcore"
)

// CauseKey is the field that, with the level and the message, names a cause
// for sampling: "connection refused" with cause "untrusted" and with cause
// "no_backend" are sampled apart, so a flood of one never hides the other.
const CauseKey = "cause"

// sampleSlots is the number of sampling counters; causes whose keys collide
// share one budget.
const sampleSlots = 1024

// slot counts the lines of the causes hashed to it in the current second.
type slot struct {
	window  atomic.Uint64 // unix second << 24 | lines written in it
	dropped atomic.Int64  // lines suppressed since the last report
	key     atomic.Pointer[string]
}

// sampler holds the counters shared by a core and its With children.
type sampler struct {
	burst      int64
	min        zapcore.Level // levels below are never sampled
	slots      [sampleSlots]slot
	suppressed atomic.Int64 // total, for the metric
}

// allow reports whether a line of this cause may be written now, and counts
// it as suppressed otherwise.
func (s *sampler) allow(ent zapcore.Entry, fields []zapcore.Field) bool {
	if ent.Level < s.min {
		return true
	}
	cause := causeOf(fields)
	h := fnv32a(fnv32a(fnvOffset^uint32(ent.Level+2)*fnvPrime, ent.Message)^0xff*fnvPrime, cause)
	sl := &s.slots[h%sampleSlots]
	if sl.take(uint64(ent.Time.Unix()), uint64(s.burst)) {
		return true
	}
	s.suppressed.Add(1)
	if sl.dropped.Add(1) == 1 {
		key := ent.Message
		if cause != "" {
			key += " (" + cause + ")"
		}
		sl.key.Store(&key)
	}
	return false
}

// take counts one line in second sec and reports whether it is within
// burst. The second and its count change together, in one atomic word. A
// line stamped before the current second (it waited between its entry's
// time and Write) counts in the current second: the window only moves
// forward.
func (sl *slot) take(sec, burst uint64) bool {
	for {
		old := sl.window.Load()
		next := sec<<24 | 1
		if old>>24 >= sec {
			if old&(1<<24-1) >= burst {
				return false
			}
			next = old + 1
		}
		if sl.window.CompareAndSwap(old, next) {
			return true
		}
	}
}

func causeOf(fields []zapcore.Field) string {
	for _, f := range fields {
		if f.Key == CauseKey && f.Type == zapcore.StringType {
			return f.String
		}
	}
	return ""
}

// SuppressedCause is one cause whose lines were suppressed.
type SuppressedCause struct {
	Cause string // message (cause)
	Lines int64
}

// take returns and resets the suppressed counts per cause.
func (s *sampler) take() []SuppressedCause {
	var out []SuppressedCause
	for i := range s.slots {
		sl := &s.slots[i]
		if n := sl.dropped.Swap(0); n > 0 {
			key := "?"
			if k := sl.key.Load(); k != nil {
				key = *k
			}
			out = append(out, SuppressedCause{Cause: key, Lines: n})
		}
	}
	return out
}

// sampledCore writes at most burst lines per cause per second of the
// entries at or above the sampler's level; fields are only known at Write,
// so the decision is taken there.
type sampledCore struct {
	zapcore.Core
	s *sampler
}

func (c *sampledCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *sampledCore) With(fields []zapcore.Field) zapcore.Core {
	return &sampledCore{Core: c.Core.With(fields), s: c.s}
}

func (c *sampledCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	if !c.s.allow(ent, fields) {
		return nil
	}
	return c.Core.Write(ent, fields)
}

const (
	fnvOffset = 2166136261
	fnvPrime  = 16777619
)

// fnv32a continues an FNV-1a hash over s (without allocating).
func fnv32a(h uint32, s string) uint32 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * fnvPrime
	}
	return h
}
