package store

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/closer"
	"github.com/capd-dev/capd/internal/linux"
)

// Watcher follows owner cgroups (cgroup.Watcher is one). The store takes
// one reference per watched entry; the watcher's owner reports emptied
// cgroups to OwnerEmptied.
type Watcher interface {
	// Add takes a reference on cgroup p's watch and returns its epoch,
	// whether it has processes, and whether it was removed and created
	// again since the watch began (holders with an older epoch belong to
	// the old cgroup).
	Add(p string) (epoch uint64, populated, recreated bool, err error)
	// Hold takes a reference on cgroup p's watch, with no system call,
	// if the watcher watches the cgroup with id id there and last saw
	// it populated, and returns the watch's epoch; ok is false (and
	// nothing taken) otherwise.
	Hold(p string, id uint64) (epoch uint64, ok bool)
	// Remove drops a reference Add or Hold took.
	Remove(p string)
}

// Observer mirrors the store elsewhere (systemd's fd store). Added,
// Removed and Pending are called under the store's lock, so they see
// changes in the store's order; they must not call back into the store.
type Observer interface {
	Added(e *Entry)
	Removed(e *Entry)
	// Pending is how many fds of removed entries the mirror still holds.
	Pending() int
	// Room is how many entry fds the mirror keeps, -1 if unknown.
	Room() int
	// Dropped tells that entries went without a request (expiry, an owner
	// gone): called without the store's lock, after the removals.
	Dropped()
}

// Limits bound one publish: the whole store, the admin reserve, the
// publisher's uid, and each cgroup on the way up from the entry's cgroup.
type Limits struct {
	Max           int                                           // entries in the whole store
	Reserve       int                                           // of Max, kept for publishers that are not Limited
	PerUID        int                                           // entries per accounting uid
	PinnedPerUID  int                                           // pinned entries per accounting uid
	Node          func(cgroup string, owner bool) policy.Limits // limits of a cgroup node (owner: it is the entry's owner cgroup)
	MaxGrants     int                                           // grants of one entry or grant (its consumers, or its delegations)
	MaxGrantDepth int                                           // 1: consumers' grants only; 2: one delegation from them; ...
}

// maxTombs bounds the removed entries audit remembers.
const maxTombs = 1024

// maxLedger bounds the enforced revocations the ledger remembers.
const maxLedger = 4096

// Revoked is an enforced revocation in the ledger: what a start that
// finds the kernel's enforcement lost lists as no longer enforced.
type Revoked struct {
	ID  string // the entry's or grant's id
	Seq uint64 // its number: the revocation's id in the kernel
	Key Key
	At  time.Time
}

// maxClosers bounds the threads that may sit in close(2) at once for
// released entries; each accounting uid has at most one of them.
const maxClosers = 16

// usage counts the entries charged to a cgroup node: its own and those of
// every cgroup below it.
type usage struct {
	entries, pinned int
	owners          int // entries whose owner cgroup is this node
}

// Node is one cgroup's usage, as status reports it.
type Node struct {
	Path                    string
	Entries, Pinned, Owners int
}

// watchedCgroup is the watched entries of one owner cgroup.
type watchedCgroup struct {
	entries []*Entry // e.ownIndex is e's place here
}

// waiter is closed when its key is published; n counts who waits on it.
type waiter struct {
	ch chan struct{}
	n  int
}

// Store maps keys to entries and keeps the accounting that quotas and
// lifecycle need. Every change to entries and usage happens under mu, so a
// quota check and the insert it allows are atomic.
type Store struct {
	watch  Watcher // nil: entries do not follow their owners
	clock  Clock
	closer *closer.Closer

	mu        sync.RWMutex
	obs       Observer   // nil: no mirror
	enf       Enforcer   // nil: revokes are advisory
	cloneTree TreeCloner // nil: linux.Detached
	entries   index
	exp       expiryHeap
	timer     Timer
	closed    bool
	tombs     []Tombstone               // the last removed entries, oldest first, at most maxTombs
	ledger    []Revoked                 // enforced revocations, oldest first, at most maxLedger
	usage     map[string]*usage         // cgroup path -> usage of the subtree
	byUID     map[uint32]*usage         // accounting uid -> its limited entries
	pins      map[string]int            // owner identity -> its pinned entries, wherever published
	owned     map[string]*watchedCgroup // owner cgroup -> its watched entries
	seq       uint64                    // the last entry number given out; never reused
	waiters   map[Key]*waiter           // one per awaited key, while someone waits
}

// New returns an empty store. w may be nil (entries then never follow
// their owners), and so may clock (the system's).
func New(w Watcher, clock Clock) *Store {
	if clock == nil {
		clock = realClock{}
	}
	s := &Store{
		watch:   w,
		clock:   clock,
		closer:  closer.New(maxClosers, nil),
		entries: newIndex(),
		usage:   make(map[string]*usage),
		byUID:   make(map[uint32]*usage),
		pins:    make(map[string]int),
		owned:   make(map[string]*watchedCgroup),
		waiters: make(map[Key]*waiter),
	}
	s.timer = clock.AfterFunc(time.Hour, s.expire)
	s.timer.Stop()
	return s
}

// Enforcer makes a revoke hold in the kernel: once Enforce returns, every
// holder's further use of e's description fails, whatever the holder
// does with its copy. The store calls it for an entry or grant that is
// revoked, expires or loses its owner, and for every grant derived from
// it: after its lock, before the fd is released and the revoke answered;
// never for a replace's own entry, a shutdown or a hand-off. A removal it
// enforces is recorded in the ledger (Ledger).
type Enforcer interface {
	Enforce(e *Entry)
}

// SetEnforcer sets the Enforcer, before the store is used.
func (s *Store) SetEnforcer(enf Enforcer) {
	s.mu.Lock()
	s.enf = enf
	s.mu.Unlock()
}

// SetObserver sets the mirror, before the store is used.
func (s *Store) SetObserver(o Observer) {
	s.mu.Lock()
	s.obs = o
	s.mu.Unlock()
}

// Publish inserts e, taking over the caller's reference whatever the
// outcome. mayReplace decides, under the store's lock, on replacing an
// entry of the same name (only asked when replace is set). Replacing or
// refusing releases fds only after the lock is dropped: close(2) can block
// and must not stall the store.
//
// An unpinned entry lives while its owner cgroup has processes. ownerID is
// the id of the owner cgroup the publisher was found in (0: unknown): if
// the watcher already watches that cgroup and last saw it populated, the
// entry joins the watch as it is (Watcher.Hold); otherwise the watcher
// reads the cgroup now (Watcher.Add), and an owner cgroup without processes
// (or gone) refuses the entry with ErrOwnerEmpty. Either way the entry
// records the watch's epoch: an emptying reported later drops it.
func (s *Store) Publish(e *Entry, ownerID uint64, replace bool, mayReplace func(old *Entry) error, l *Limits) error {
	var dead []*Entry
	defer func() { s.ReleaseAll(dead) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.entries.get(e.Owner(), e.name)
	err := s.admitLocked(e, old, replace, l)
	if err == nil && old != nil {
		err = mayReplace(old)
	}
	if err == nil && e.watched() && s.watch != nil {
		dead, err = s.watchLocked(e, ownerID, old, dead)
	}
	if err != nil {
		dead = append(dead, e)
		return err
	}
	if old != nil {
		// A replaced entry's own description may be the new one's (a
		// restarted publisher's); its grants' are their own.
		if s.enf != nil {
			walkGrants(old, func(g *Entry) bool { s.markLocked(g); return true })
		}
		dead = s.removeLocked(old, dead)
	}
	s.seq++
	e.seq = s.seq
	s.insertLocked(e)
	if s.obs != nil {
		s.obs.Added(e)
	}
	return nil
}

// watchLocked takes e's reference on its owner cgroup's watch and records
// the watch's epoch in e, or refuses e if the owner cgroup has no
// processes; old is the entry e would replace. Entries of an owner cgroup
// found created again go to dead.
func (s *Store) watchLocked(e *Entry, ownerID uint64, old *Entry, dead []*Entry) ([]*Entry, error) {
	ocg := e.OwnerCgroup()
	var held bool
	if e.epoch, held = s.watch.Hold(ocg, ownerID); held {
		return dead, nil
	}
	epoch, populated, recreated, err := s.watch.Add(ocg)
	if err != nil {
		return dead, err
	}
	e.epoch = epoch
	if recreated {
		// The owner cgroup was removed and created again: the unpinned
		// entries of the old one go now.
		dead = s.dropOwnedLocked(ocg, epoch, old, dead)
	}
	if !populated {
		s.watch.Remove(ocg)
		return dead, errorf(ErrOwnerEmpty, "owner cgroup %s has no processes left: an unpinned entry would be dropped at once (publish with pin to outlive the service)", ocg)
	}
	return dead, nil
}

// admitLocked checks everything that could refuse e, old being the entry it
// would replace.
func (s *Store) admitLocked(e, old *Entry, replace bool, l *Limits) error {
	switch {
	case s.closed:
		return errorf(ErrClosed, "agent is shutting down")
	case old != nil && !replace:
		return errorf(ErrExists, "%s:%s is already published (revoke it first, or publish with replace)", e.Owner(), e.name)
	case old == nil && s.entries.Len() >= l.Max:
		return errorf(ErrQuota, "cgroup / (the whole agent) holds %d entries, its limit (max_entries, or what RLIMIT_NOFILE or systemd's FileDescriptorStoreMax leaves room for)", s.entries.Len())
	case s.obs != nil && s.obs.Room() >= 0 && s.mirrorNeedLocked() > s.obs.Room():
		return errorf(ErrQuota, "systemd's fd store would hold %d fds for entries, more than it keeps (FileDescriptorStoreMax less 2 for the metadata is %d; fds of removed entries leave it once the next metadata is confirmed)", s.mirrorNeedLocked(), s.obs.Room())
	case old == nil && e.Limited() && s.entries.Len() >= l.Max-l.Reserve:
		return errorf(ErrQuota, "the agent holds %d entries; the last %d of its %d are kept for host administrators", s.entries.Len(), l.Reserve, l.Max)
	}
	if e.Limited() {
		var u usage
		if p := s.byUID[e.acct]; p != nil {
			u = *p
		}
		if old != nil && old.Limited() && old.acct == e.acct {
			u.entries--
			if old.Pinned() {
				u.pinned--
			}
		}
		closing := s.closer.Pending(e.acct) // released fds whose close(2) has not returned
		switch {
		case u.entries+closing+1 > l.PerUID:
			return errorf(ErrQuota, "uid %d holds %d entries and %d fds still being closed, its limit (max_entries_per_uid is %d)", e.acct, u.entries, closing, l.PerUID)
		case e.Pinned() && u.pinned+1 > l.PinnedPerUID:
			return errorf(ErrQuota, "uid %d holds %d pinned entries, its limit (max_pinned_per_uid is %d)", e.acct, u.pinned, l.PinnedPerUID)
		}
	}
	// Like pids.max: the entry counts against its cgroup and every
	// ancestor, and every limit on the way must leave room.
	ocg := e.OwnerCgroup()
	for p, ok := e.Cgroup(), true; ok; p, ok = cgroup.Parent(p) {
		var entries, pinned int
		if u := s.usage[p]; u != nil {
			entries, pinned = u.entries, u.pinned
		}
		if old != nil && cgroup.Within(old.Cgroup(), p) {
			entries--
			if old.Pinned() {
				pinned--
			}
		}
		if p == ocg {
			// An identity's pins count wherever it published them: a
			// container restarted under its name gets a new cgroup, not
			// a fresh quota.
			own := s.pins[e.Owner()]
			if old != nil && old.Pinned() {
				own--
			}
			pinned = max(pinned, own)
		}
		nl := l.Node(p, p == ocg)
		if nl.MaxEntries != policy.Unlimited && entries+1 > nl.MaxEntries {
			return errorf(ErrQuota, "cgroup %s holds %d entries, its limit (%s is %d)", p, entries, nl.EntriesSource, nl.MaxEntries)
		}
		if e.Pinned() && nl.MaxPinned != policy.Unlimited && pinned+1 > nl.MaxPinned {
			return errorf(ErrQuota, "cgroup %s holds %d pinned entries, its limit (%s is %d)", p, pinned, nl.PinnedSource, nl.MaxPinned)
		}
	}
	return nil
}

// mirrorNeedLocked is how many entry fds the mirror would hold with one
// more fd: the entries', those of removed entries still waiting to leave
// it, and the new one. A replace is no different: the old entry's fd
// stays until the mirror lets it go, beside the new one.
func (s *Store) mirrorNeedLocked() int {
	return s.entries.Len() + s.obs.Pending() + 1
}

func (s *Store) insertLocked(e *Entry) {
	s.entries.put(e)
	if e.IsGrant() {
		linkGrantLocked(e)
	}
	if len(s.waiters) > 0 {
		k := e.Key()
		if w := s.waiters[k]; w != nil {
			close(w.ch)
			delete(s.waiters, k)
		}
	}
	if e.expires != 0 {
		heap.Push(&s.exp, e)
		if s.exp[0] == e {
			s.timer.Reset(e.Expires().Sub(s.clock.Now()))
		}
	}
	s.chargeLocked(e, 1)
	if e.watched() && s.watch != nil {
		ocg := e.OwnerCgroup()
		o := s.owned[ocg]
		if o == nil {
			o = &watchedCgroup{}
			s.owned[ocg] = o
		}
		e.ownIndex = int32(len(o.entries))
		o.entries = append(o.entries, e)
	}
}

// chargeLocked adds d to the usage of e's cgroup and all its ancestors, of
// its accounting uid and of its owner identity.
func (s *Store) chargeLocked(e *Entry, d int) {
	pinned := e.Pinned()
	if e.Limited() {
		u := s.byUID[e.acct]
		if u == nil {
			u = &usage{}
			s.byUID[e.acct] = u
		}
		u.entries += d
		if pinned {
			u.pinned += d
		}
		if u.entries == 0 {
			delete(s.byUID, e.acct)
		}
	}
	if pinned {
		owner := e.Owner()
		if s.pins[owner] += d; s.pins[owner] == 0 {
			delete(s.pins, owner)
		}
	}
	ocg := e.OwnerCgroup()
	for p, ok := e.Cgroup(), true; ok; p, ok = cgroup.Parent(p) {
		u := s.usage[p]
		if u == nil {
			u = &usage{}
			s.usage[p] = u
		}
		u.entries += d
		if pinned {
			u.pinned += d
		}
		if p == ocg {
			u.owners += d
		}
		if u.entries == 0 {
			delete(s.usage, p)
		}
	}
}

// Acquire returns the entry owner:name with a reference held for the
// caller, who must Release it; nil if there is none. A grant's name
// (NAME#gN) names none: grants are reached through their entry only.
func (s *Store) Acquire(owner, name string) *Entry {
	if isGrantName(name) {
		return nil
	}
	s.mu.RLock()
	e := s.entries.get(owner, name)
	if e != nil {
		e.refs.Add(1)
	}
	s.mu.RUnlock()
	return e
}

// AcquireOrWait is Acquire, or, when there is no such entry, a channel
// that is closed when one is published under the name, and a function the
// caller must call when it stops waiting.
func (s *Store) AcquireOrWait(owner, name string) (*Entry, <-chan struct{}, func()) {
	if isGrantName(name) {
		return nil, nil, func() {} // never published: a wait ends with the deadline
	}
	k := Key{owner, name}
	if e := s.Acquire(owner, name); e != nil {
		return e, nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries.get(owner, name); e != nil {
		e.refs.Add(1)
		return e, nil, nil
	}
	w := s.waiters[k]
	if w == nil {
		w = &waiter{ch: make(chan struct{})}
		s.waiters[k] = w
	}
	w.n++
	return nil, w.ch, func() {
		s.mu.Lock()
		if w.n--; w.n == 0 && s.waiters[k] == w {
			delete(s.waiters, k)
		}
		s.mu.Unlock()
	}
}

// ReleaseAll releases every entry of dead. An entry a revoke removed is
// first enforced (Enforcer.Enforce): here, after the store's lock, while
// the store's reference still keeps its fd open, and before the revoke is
// answered.
func (s *Store) ReleaseAll(dead []*Entry) {
	for _, e := range dead {
		if e.flags&flagEnforce != 0 && s.enf != nil {
			s.enf.Enforce(e)
		}
		s.Release(e)
	}
}

// Release drops a reference. The last one hands the fd to the closer,
// keyed by the uid the entry counts against: a close(2) that blocks delays
// nobody else's work, and the owner's pending closes count against its
// limits.
func (s *Store) Release(e *Entry) {
	if e.unref() {
		s.closer.Close(e.acct, e.fd.Release())
	}
}

// Revoke removes owner:name if may, called under the store's lock, allows
// it, and returns its id. With shutdown, a socket entry is first shut down
// for reading and writing, which every holder's copy shares; other kinds
// are refused unchanged.
func (s *Store) Revoke(owner, name string, may func(*Entry) error, shutdown bool) (id string, err error) {
	s.mu.Lock()
	e := s.entries.get(owner, name)
	if e == nil || isGrantName(name) {
		s.mu.Unlock()
		return "", errorf(ErrNotFound, "%s:%s is not published", owner, name)
	}
	if err := may(e); err != nil {
		s.mu.Unlock()
		return "", err
	}
	if shutdown && e.Kind() != "socket" {
		s.mu.Unlock()
		return "", errorf(ErrNotSocket, "%s:%s is a %s, not a socket: shutdown cannot reach its other holders (revoke without it)", owner, name, e.Kind())
	}
	if shutdown {
		if err := linux.Shutdown(e.fd.Int(), unix.SHUT_RDWR); err != nil && !errors.Is(err, unix.ENOTCONN) {
			s.mu.Unlock()
			return "", fmt.Errorf("shutdown %s:%s: %w", owner, name, err)
		}
	}
	dead := s.revokeLocked(e, nil)
	s.mu.Unlock()
	id = e.ID()
	s.ReleaseAll(dead)
	return id, nil
}

// removeLocked unlinks e and every grant derived from it and appends them
// to dead; the caller releases the store's references after unlocking. An
// entry no longer in the store (a grant its parent's removal took) is
// skipped.
func (s *Store) removeLocked(e *Entry, dead []*Entry) []*Entry {
	if s.entries.get(e.Owner(), e.name) != e {
		return dead
	}
	if e.more != nil {
		for n := len(e.more.grants); n > 0; n = len(e.more.grants) {
			dead = s.removeLocked(e.more.grants[n-1], dead)
		}
	}
	if e.IsGrant() {
		unlinkGrantLocked(e)
	}
	s.entries.del(e)
	if e.heapIndex >= 0 {
		heap.Remove(&s.exp, int(e.heapIndex))
	}
	s.chargeLocked(e, -1)
	if s.obs != nil && !s.closed {
		s.obs.Removed(e)
	}
	if len(s.tombs) == maxTombs {
		copy(s.tombs, s.tombs[1:])
		s.tombs = s.tombs[:maxTombs-1]
	}
	dev, ino := e.File()
	s.tombs = append(s.tombs, Tombstone{Key: e.Key(), Kind: e.Kind(), Dev: dev, Ino: ino, Removed: s.clock.Now()})
	if e.ownIndex >= 0 {
		ocg := e.OwnerCgroup()
		o := s.owned[ocg]
		last := o.entries[len(o.entries)-1]
		o.entries[e.ownIndex], last.ownIndex = last, e.ownIndex
		o.entries[len(o.entries)-1] = nil
		o.entries = o.entries[:len(o.entries)-1]
		e.ownIndex = -1
		if len(o.entries) == 0 {
			delete(s.owned, ocg)
		}
		s.watch.Remove(ocg)
	}
	return append(dead, e)
}

// revokeLocked is removeLocked for an entry or grant that is revoked
// (asked for, expired, its owner gone): with an Enforcer, it and its
// grants are marked for enforcement (ReleaseAll, after the lock) and
// recorded in the ledger.
func (s *Store) revokeLocked(e *Entry, dead []*Entry) []*Entry {
	if s.enf != nil && s.entries.get(e.Owner(), e.name) == e {
		s.markLocked(e)
		walkGrants(e, func(g *Entry) bool { s.markLocked(g); return true })
	}
	return s.removeLocked(e, dead)
}

// markLocked marks e for enforcement and records it in the ledger.
func (s *Store) markLocked(e *Entry) {
	e.flags |= flagEnforce
	if len(s.ledger) == maxLedger {
		copy(s.ledger, s.ledger[1:])
		s.ledger = s.ledger[:maxLedger-1]
	}
	s.ledger = append(s.ledger, Revoked{ID: e.ID(), Seq: e.seq, Key: e.Key(), At: s.clock.Now()})
}

// dropOwnedLocked removes the watched entries of owner cgroup p published
// before epoch, except keep, and appends them to dead.
func (s *Store) dropOwnedLocked(p string, epoch uint64, keep *Entry, dead []*Entry) []*Entry {
	o := s.owned[p]
	if o == nil {
		return dead
	}
	var gone []*Entry
	for _, e := range o.entries {
		if e.epoch < epoch && e != keep {
			gone = append(gone, e)
		}
	}
	for _, e := range gone {
		dead = s.revokeLocked(e, dead)
	}
	return dead
}

// DropOwned drops every unpinned entry of owner cgroup p (a container that
// ended) and returns how many it dropped.
func (s *Store) DropOwned(p string) int {
	return s.drop(func() []*Entry { return s.dropOwnedLocked(p, math.MaxUint64, nil, nil) })
}

// OwnerEmptied drops the unpinned entries of owner cgroup p that were
// published before the emptying the watcher numbered epoch, and returns
// how many it dropped.
func (s *Store) OwnerEmptied(p string, epoch uint64) int {
	return s.drop(func() []*Entry { return s.dropOwnedLocked(p, epoch, nil, nil) })
}

// expire drops every entry whose deadline has passed and re-arms the timer.
func (s *Store) expire() {
	s.drop(func() []*Entry {
		var dead []*Entry
		now := s.clock.Now()
		for len(s.exp) > 0 && s.exp[0].expiresBy(now) {
			dead = s.revokeLocked(s.exp[0], dead)
		}
		if len(s.exp) > 0 && !s.closed {
			s.timer.Reset(s.exp[0].Expires().Sub(now))
		}
		return dead
	})
}

// drop removes, under the lock, the entries remove picks, releases them
// after it and tells the observer.
//
// A frozen or closed store drops nothing: its entries are being handed to
// the next agent process, which checks their owners again.
func (s *Store) drop(remove func() []*Entry) int {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0
	}
	dead := remove()
	obs := s.obs
	s.mu.Unlock()
	s.ReleaseAll(dead)
	if len(dead) > 0 && obs != nil {
		obs.Dropped()
	}
	return len(dead)
}

// Unpublish removes e if it is still the entry under its name, for a
// publish that could not be made durable.
func (s *Store) Unpublish(e *Entry) {
	s.mu.Lock()
	if s.entries.get(e.Owner(), e.name) != e {
		s.mu.Unlock()
		return
	}
	dead := s.removeLocked(e, nil)
	s.mu.Unlock()
	s.ReleaseAll(dead)
}

// Restore inserts an entry kept across a restart under its recorded id,
// taking over the caller's reference whatever the outcome. An entry that
// is a duplicate, has expired by now, or whose owner cgroup has no
// processes left is refused (and the Observer told it is removed).
func (s *Store) Restore(e *Entry, id string) error {
	var dead []*Entry
	defer func() { s.ReleaseAll(dead) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, err := ParseEntryID(id); err == nil && EntryID(n, e.Owner(), e.name) == id {
		e.seq = n
	} else {
		e.extra().id = id
	}
	drop := func(err error) error {
		dead = append(dead, e)
		if s.obs != nil {
			s.obs.Removed(e)
		}
		return err
	}
	// An entry that expired or lost its owner while the agent was down is
	// revoked now: enforced, where an Enforcer is set.
	revoke := func(err error) error {
		if s.enf != nil {
			s.markLocked(e)
		}
		return drop(err)
	}
	switch {
	case s.entries.get(e.Owner(), e.name) != nil:
		return drop(errors.New("duplicate"))
	case e.expiresBy(s.clock.Now()):
		return revoke(errors.New("expired"))
	}
	if e.IsGrant() {
		pn, _ := ParentName(e.name)
		p := s.entries.get(e.Owner(), pn)
		if p == nil {
			return revoke(fmt.Errorf("the entry or grant %s it derives from was not restored", pn))
		}
		e.more.grant.parent = p
	}
	if e.watched() && s.watch != nil {
		ocg := e.OwnerCgroup()
		epoch, populated, _, err := s.watch.Add(ocg)
		if err != nil {
			return drop(err)
		}
		if !populated {
			s.watch.Remove(ocg)
			return revoke(fmt.Errorf("owner cgroup %s has no processes left", ocg))
		}
		e.epoch = epoch
	}
	s.insertLocked(e)
	return nil
}

// Ledger returns the enforced revocations remembered, oldest first.
func (s *Store) Ledger() []Revoked {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.ledger)
}

// SetLedger replaces the ledger (a restored one, or one pruned of the
// revocations whose files are gone).
func (s *Store) SetLedger(l []Revoked) {
	s.mu.Lock()
	s.ledger = slices.Clone(l[max(len(l)-maxLedger, 0):])
	s.mu.Unlock()
}

// SetNext makes n the lowest entry number given out from now on, if it is
// above what the store would give: numbers are never reused, across
// restarts too.
func (s *Store) SetNext(n uint64) {
	s.mu.Lock()
	if n > 0 {
		s.seq = max(s.seq, n-1)
	}
	s.mu.Unlock()
}

// ReadLocked calls f under the store's read lock with the next entry
// number, every entry, in no order, and the ledger: a consistent view for
// the mirror. f must not call into the store, nor keep the ledger.
func (s *Store) ReadLocked(f func(next uint64, entries iter.Seq[*Entry], ledger []Revoked)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f(s.seq+1, s.entries.all(), s.ledger)
}

// Freeze stops the store for a hand-off: no more publishes, expiry or
// drops. It returns the next entry number and every entry with a reference
// held for the caller, who hands their fds on (and releases the references
// if the hand-off fails).
func (s *Store) Freeze() (next uint64, entries []*Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.timer.Stop()
	entries = make([]*Entry, 0, s.entries.Len())
	for e := range s.entries.all() {
		e.refs.Add(1)
		entries = append(entries, e)
	}
	return s.seq + 1, entries
}

// Hold returns every entry, each with a reference held for the caller
// (ReleaseAll), and the tombstones: what audit compares processes' fds
// with.
func (s *Store) Hold() (live []*Entry, tombs []Tombstone) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	live = make([]*Entry, 0, s.entries.Len())
	for e := range s.entries.all() {
		e.refs.Add(1)
		live = append(live, e)
	}
	return live, append([]Tombstone(nil), s.tombs...)
}

// Snapshot returns the entries that visible admits, sorted by key. The
// caller gets no references: it may read their fields, not use their fds.
func (s *Store) Snapshot(visible func(*Entry) bool) []*Entry {
	s.mu.RLock()
	out := make([]*Entry, 0, s.entries.Len())
	for e := range s.entries.all() {
		if visible(e) {
			out = append(out, e)
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key().Less(out[j].Key()) })
	return out
}

// Nodes returns the cgroups that hold entries, sorted by path, after the
// cursor (all if after is "").
func (s *Store) Nodes(after string) []Node {
	s.mu.RLock()
	out := make([]Node, 0, len(s.usage))
	for p, u := range s.usage {
		if after == "" || p > after {
			out = append(out, Node{Path: p, Entries: u.entries, Pinned: u.pinned, Owners: u.owners})
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// Len returns the number of entries.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.entries.Len()
}

// Counts returns the number of entries and of pinned entries: the root
// cgroup's usage, which every entry is charged to.
func (s *Store) Counts() (entries, pinned int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if u := s.usage["/"]; u != nil {
		pinned = u.pinned
	}
	return s.entries.Len(), pinned
}

// Responsive reports whether the store's lock can be taken: it blocks
// until it can (the watchdog times it).
func (s *Store) Responsive() {
	s.mu.Lock()
	s.mu.Unlock() //nolint:staticcheck // taking the lock is the check
}

// Close releases every entry; the store accepts no more publishes. It
// waits up to ctx for the closes and returns, per uid, the fds still in
// close(2) then (the process exits next; the kernel closes what is left).
func (s *Store) Close(ctx context.Context) (stuck map[uint32]int, err error) {
	var dead []*Entry
	s.mu.Lock()
	s.closed = true
	s.timer.Stop()
	for _, e := range slices.Collect(s.entries.all()) {
		dead = s.removeLocked(e, dead)
	}
	s.mu.Unlock()
	s.ReleaseAll(dead)
	return s.closer.Stop(ctx)
}
