package store

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock whose time moves only by Advance, which runs the
// functions of the timers that fall due on the calling goroutine, in
// deadline order, with the time set to each deadline while it runs.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	seq    uint64 // orders timers armed for the same deadline
	timers []*fakeTimer
}

type fakeTimer struct {
	c      *fakeClock
	f      func()
	when   time.Time
	seq    uint64
	active bool
}

func newFakeClock(now time.Time) *fakeClock { return &fakeClock{now: now} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	t := &fakeTimer{c: c, f: f}
	c.mu.Lock()
	c.timers = append(c.timers, t)
	t.armLocked(d)
	c.mu.Unlock()
	return t
}

func (t *fakeTimer) armLocked(d time.Duration) {
	t.c.seq++
	t.when, t.seq, t.active = t.c.now.Add(d), t.c.seq, true
}

// Reset re-arms t for d from now and reports whether it was active, like
// (*time.Timer).Reset.
func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.armLocked(d)
	return was
}

// Stop disarms t and reports whether it was active, like
// (*time.Timer).Stop.
func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	return was
}

// Advance moves the time on by d, running every timer due by then.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	for {
		var next *fakeTimer
		for _, t := range c.timers {
			if t.active && !t.when.After(target) && (next == nil || t.when.Before(next.when) || t.when.Equal(next.when) && t.seq < next.seq) {
				next = t
			}
		}
		if next == nil {
			break
		}
		if next.when.After(c.now) {
			c.now = next.when
		}
		next.active = false
		c.mu.Unlock()
		next.f() // may call Now, Reset and Stop
		c.mu.Lock()
	}
	c.now = target
	c.mu.Unlock()
}

// armed reports whether a timer is active, and its deadline.
func (c *fakeClock) armed() (bool, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.timers {
		if t.active {
			return true, t.when
		}
	}
	return false, time.Time{}
}

// fakeWatcher follows fake owner cgroups: each path has a populated flag
// (what the watcher last saw), an epoch (from one counter, as
// cgroup.Watcher's) and the id of the cgroup watched there; Add and Hold
// count references so that tests can check that every one is balanced by
// one Remove.
type fakeWatcher struct {
	mu                   sync.Mutex
	epoch                uint64
	ids                  uint64 // the last cgroup id given out
	paths                map[string]*fakeCgroup
	adds, holds, removes int
	bad                  []string // Removes without a reference
}

type fakeCgroup struct {
	populated bool
	epoch     uint64
	id        uint64 // the watched cgroup's id
	refs      int
	recreate  uint64 // not 0: the next Add finds the cgroup made again, with this id
	err       error  // Add fails with it
}

func newFakeWatcher() *fakeWatcher { return &fakeWatcher{paths: make(map[string]*fakeCgroup)} }

func (w *fakeWatcher) cgLocked(p string) *fakeCgroup {
	c := w.paths[p]
	if c == nil {
		w.ids++
		c = &fakeCgroup{epoch: w.epoch, id: w.ids}
		w.paths[p] = c
	}
	return c
}

func (w *fakeWatcher) Add(p string) (epoch uint64, populated, recreated bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.cgLocked(p)
	if c.err != nil {
		return 0, false, false, c.err
	}
	if c.refs == 0 {
		c.epoch = w.epoch // a watch made anew starts at the counter
	}
	if c.recreate != 0 {
		c.id, c.recreate = c.recreate, 0
		if c.refs > 0 {
			w.epoch++
			c.epoch, recreated = w.epoch, true
		}
	}
	c.refs++
	w.adds++
	return c.epoch, c.populated, recreated, nil
}

// Hold takes a reference if p is watched, on the cgroup with id id, and
// was seen populated, as cgroup.Watcher's does.
func (w *fakeWatcher) Hold(p string, id uint64) (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.paths[p]
	if c == nil || c.refs == 0 || id == 0 || c.id != id || !c.populated {
		return 0, false
	}
	c.refs++
	w.holds++
	return c.epoch, true
}

// ID returns the id of the cgroup watched at p.
func (w *fakeWatcher) ID(p string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cgLocked(p).id
}

func (w *fakeWatcher) Remove(p string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.paths[p]
	if c == nil || c.refs == 0 {
		w.bad = append(w.bad, p)
		return
	}
	c.refs--
	w.removes++
}

// Populate sets whether p has processes.
func (w *fakeWatcher) Populate(p string, populated bool) {
	w.mu.Lock()
	w.cgLocked(p).populated = populated
	w.mu.Unlock()
}

// Empty marks p empty and returns the epoch of the emptying, as the
// watcher reports it.
func (w *fakeWatcher) Empty(p string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.cgLocked(p)
	w.epoch++
	c.epoch, c.populated = w.epoch, false
	return c.epoch
}

// Bump numbers an emptying of p that processes arriving since undid: p
// stays populated.
func (w *fakeWatcher) Bump(p string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.cgLocked(p)
	w.epoch++
	c.epoch = w.epoch
	return c.epoch
}

// Recreate makes p a new, populated cgroup that the next Add discovers,
// and returns its id.
func (w *fakeWatcher) Recreate(p string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.cgLocked(p)
	w.ids++
	c.recreate, c.populated = w.ids, true
	return w.ids
}

// FailAdd makes Add of p fail with err (nil: succeed again).
func (w *fakeWatcher) FailAdd(p string, err error) {
	w.mu.Lock()
	w.cgLocked(p).err = err
	w.mu.Unlock()
}

// Refs returns the references held on p.
func (w *fakeWatcher) Refs(p string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.paths[p]; c != nil {
		return c.refs
	}
	return 0
}

// Calls returns how many Adds and Holds succeeded and how many Removes
// matched one.
func (w *fakeWatcher) Calls() (adds, holds, removes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.adds, w.holds, w.removes
}

// checkBalanced fails t unless every reference Add took was dropped.
func (w *fakeWatcher) checkBalanced(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for p, c := range w.paths {
		if c.refs != 0 {
			t.Errorf("watcher: %d references left on %s", c.refs, p)
		}
	}
	if w.adds+w.holds != w.removes || len(w.bad) > 0 {
		t.Errorf("watcher: %d Adds, %d Holds, %d Removes, Removes without a reference: %v", w.adds, w.holds, w.removes, w.bad)
	}
}

// recObserver records what the store tells its mirror.
type recObserver struct {
	mu      sync.Mutex
	events  []string // "+owner:name" (Added), "-owner:name" (Removed)
	pending int
	room    int
	dropped int
}

func newObserver() *recObserver { return &recObserver{room: -1} }

func (o *recObserver) Added(e *Entry)   { o.note("+", e) }
func (o *recObserver) Removed(e *Entry) { o.note("-", e) }
func (o *recObserver) note(op string, e *Entry) {
	o.mu.Lock()
	o.events = append(o.events, fmt.Sprintf("%s%s:%s", op, e.Owner(), e.Name()))
	o.mu.Unlock()
}

func (o *recObserver) Pending() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pending
}

func (o *recObserver) Room() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.room
}

func (o *recObserver) Dropped() {
	o.mu.Lock()
	o.dropped++
	o.mu.Unlock()
}

func (o *recObserver) set(room, pending int) {
	o.mu.Lock()
	o.room, o.pending = room, pending
	o.mu.Unlock()
}

// take returns the events since the last take and the Dropped count.
func (o *recObserver) take() (events []string, dropped int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	events = slices.Clone(o.events)
	o.events = o.events[:0]
	return events, o.dropped
}
