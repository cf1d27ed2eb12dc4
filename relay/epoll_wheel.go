//go:build linux

package relay

// epWheelSlots is the number of slots of a timing wheel; with the default
// 50ms tick one turn is 51.2s. Longer timeouts wait whole turns in a slot.
const epWheelSlots = 1024

// epWheel is a hashed timing wheel of pairs, owned by one loop. A pair sits
// in the slot of the tick its deadline falls in. Activity does not touch the
// wheel: a pair only records when it last moved a byte, and the loop checks
// the real deadline when the wheel reaches the slot, re-filing the pair if
// it was active meanwhile. So a busy pair costs one re-file per timeout
// period, and an idle one nothing until it expires. Times are loop
// nanoseconds (since the engine started).
type epWheel struct {
	tick  int64 // nanoseconds per slot
	cur   int64 // last tick processed
	n     int   // pairs filed
	slots [epWheelSlots]*epPair
}

// add files p to expire at time at (rounded up to a tick, and never in a
// tick already processed).
func (w *epWheel) add(p *epPair, at int64) {
	t := (at + w.tick - 1) / w.tick
	if t <= w.cur {
		t = w.cur + 1
	}
	head := &w.slots[t%epWheelSlots]
	p.tick, p.tprev, p.tnext = t, nil, *head
	if *head != nil {
		(*head).tprev = p
	}
	*head = p
	p.filed = true
	w.n++
}

// remove takes p out of the wheel; it does nothing if p is not filed.
func (w *epWheel) remove(p *epPair) {
	if !p.filed {
		return
	}
	if p.tprev != nil {
		p.tprev.tnext = p.tnext
	} else {
		w.slots[p.tick%epWheelSlots] = p.tnext
	}
	if p.tnext != nil {
		p.tnext.tprev = p.tprev
	}
	p.tprev, p.tnext, p.filed = nil, nil, false
	w.n--
}

// advance processes every tick up to now: each pair whose tick has come is
// removed and passed to due, which may file it again (it goes to the head
// of its slot, so this pass does not see it twice).
func (w *epWheel) advance(now int64, due func(*epPair)) {
	target := now / w.tick
	if w.n == 0 || target <= w.cur {
		w.cur = max(w.cur, target)
		return
	}
	steps := min(target-w.cur, epWheelSlots) // one turn visits every slot
	for i := int64(1); i <= steps; i++ {
		for p := w.slots[(w.cur+i)%epWheelSlots]; p != nil; {
			next := p.tnext
			if p.tick <= target {
				w.remove(p)
				due(p)
			}
			p = next
		}
	}
	w.cur = target
}

// next returns the first tick after cur whose slot holds a pair, and false
// if the wheel is empty. The loop sleeps until then.
func (w *epWheel) next() (int64, bool) {
	if w.n == 0 {
		return 0, false
	}
	for i := int64(1); i <= epWheelSlots; i++ {
		if w.slots[(w.cur+i)%epWheelSlots] != nil {
			return w.cur + i, true
		}
	}
	return 0, false
}
