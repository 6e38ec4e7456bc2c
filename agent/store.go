package agent

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/closer"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

type key struct{ owner, name string } // owner is the identity

// entry is one stored fd. Fields other than refs and acquired are set before
// the entry is inserted and never change afterwards.
type entry struct {
	key
	fd        int
	refs      atomic.Int32
	acquired  atomic.Uint64
	pinned    bool
	allow     []policy.Pattern
	kind      string
	cgroup    string // the publisher's cgroup: charged for quotas with all its ancestors
	ownerCg   string // the owner cgroup (cgroup.Owner): the entry lives while it has processes, unless pinned
	epoch     uint64 // the owner cgroup's watch epoch at publish (unpinned entries)
	uid       uint32 // the publisher's uid: only it or a host administrator may replace or revoke
	acct      uint32 // the uid its per-uid limits count against (see peer.Acct)
	limited   bool   // counted against acct's limits (the publisher was no host administrator)
	dev, ino  uint64 // the file's identity, for audit after the fd is gone
	sid       string // its stored-fd name ("e-N"), unique for the store's whole life
	published time.Time
	expires   time.Time // zero: never
	heapIndex int       // index in the expiry heap, -1 when absent
}

func newEntry(owner, name string, fd int) *entry {
	e := &entry{key: key{owner, name}, fd: fd, heapIndex: -1}
	e.refs.Store(1)
	return e
}

// unref drops one reference and reports whether it was the last: the
// caller then owns e.fd and must hand it to the closer.
func (e *entry) unref() bool { return e.refs.Add(-1) == 0 }

// target describes the entry to the authorization decision.
func (e *entry) target() *policy.Target {
	return &policy.Target{Owner: e.owner, Name: e.name, UID: e.uid, Allow: e.allow, Kind: e.kind}
}

// watched reports whether the entry follows its owner cgroup's life.
func (e *entry) watched() bool { return !e.pinned && cgroup.Watchable(e.ownerCg) }

// usage counts the entries charged to a cgroup node: its own and those of
// every cgroup below it.
type usage struct {
	entries, pinned int
	owners          int // entries whose owner cgroup is this node
}

// maxTombs bounds the removed entries audit remembers.
const maxTombs = 1024

// tombstone is a removed entry: audit reports processes that still hold
// the same file. Its fd is closed, so an open file description can no
// longer be compared; the file's inode is.
type tombstone struct {
	key
	kind     string
	dev, ino uint64
	removed  time.Time
}

// store maps (owner, name) to entries, and keeps the per-cgroup accounting
// that quotas and lifecycle need. Every change to entries, usage and owned
// happens under mu, so a quota check and the insert it allows are atomic.
type store struct {
	mu      sync.RWMutex
	entries map[key]*entry
	exp     expiryHeap
	timer   *time.Timer
	closed  bool
	now     func() time.Time
	tombs   []tombstone                    // the last removed entries, oldest first, at most maxTombs
	usage   map[string]*usage              // cgroup path -> usage of the subtree
	byUID   map[uint32]*usage              // accounting uid -> its limited entries
	pins    map[string]int                 // owner identity -> its pinned entries, wherever published
	owned   map[string]map[*entry]struct{} // owner cgroup -> its watched entries
	watch   *cgroup.Watcher                // nil: entries do not follow their owners
	closer  *closer.Closer                 // closes the fds of released entries; never on the caller's goroutine
	persist *persist                       // nil: not run by systemd with an fd store
	seq     uint64                         // the last stored-fd id given out; never reused, kept across restarts and hand-offs
	waiters map[key]*waiter                // one per awaited key, while someone waits
}

// waiter is closed when its key is published; n counts who waits on it.
type waiter struct {
	ch chan struct{}
	n  int
}

func newStore() *store {
	s := &store{
		entries: make(map[key]*entry),
		now:     time.Now,
		usage:   make(map[string]*usage),
		byUID:   make(map[uint32]*usage),
		pins:    make(map[string]int),
		owned:   make(map[string]map[*entry]struct{}),
	}
	s.timer = time.AfterFunc(time.Hour, s.expire)
	s.timer.Stop()
	s.closer = closer.New(maxClosers, nil)
	return s
}

// publish inserts e, taking ownership of its fd whatever the outcome. max
// bounds the whole store. mayReplace decides, under the store's lock, on
// replacing an entry of the same name. Replacing or refusing releases fds
// only after the lock is dropped: close(2) can block (SO_LINGER sockets,
// FUSE files) and must not stall the store.
func (s *store) publish(e *entry, replace bool, mayReplace func(old *entry) error, cfg *policy.Config, max int) error {
	var dead []*entry
	defer func() { s.releaseAll(dead) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.entries[e.key]
	err := s.admitLocked(e, old, replace, cfg, max)
	if err == nil && old != nil {
		err = mayReplace(old)
	}
	if err == nil && e.watched() {
		var populated, recreated bool
		e.epoch, populated, recreated, err = s.watch.Add(e.ownerCg)
		if err == nil && recreated {
			// The owner cgroup was removed and created again: the
			// unpinned entries of the old one go now.
			for o := range s.owned[e.ownerCg] {
				if o.epoch < e.epoch && o != old {
					dead = append(dead, s.removeLocked(o))
				}
			}
		}
		if err == nil && !populated {
			s.watch.Remove(e.ownerCg)
			err = proto.Errorf(proto.CodePermissionDenied, "owner cgroup %s has no processes left: an unpinned entry would be dropped at once (publish with pin to outlive the service)", e.ownerCg)
		}
	}
	if err != nil {
		dead = append(dead, e)
		return err
	}
	if old != nil {
		dead = append(dead, s.removeLocked(old))
	}
	s.insertLocked(e)
	return nil
}

// admitLocked checks everything that could refuse e, old being the entry it
// would replace.
func (s *store) admitLocked(e, old *entry, replace bool, cfg *policy.Config, limit int) error {
	switch {
	case s.closed:
		return proto.Errorf(proto.CodeBusy, "agent is shutting down")
	case old != nil && !replace:
		return proto.Errorf(proto.CodeExists, "%s:%s is already published (revoke it first, or publish with replace)", e.owner, e.name)
	case old == nil && len(s.entries) >= limit:
		return proto.Errorf(proto.CodeQuotaExceeded, "cgroup / (the whole agent) holds %d entries, its limit (max_entries, or what RLIMIT_NOFILE or systemd's FileDescriptorStoreMax leaves room for)", len(s.entries))
	case s.persist != nil && s.persist.room >= 0 && s.fdStoreNeedLocked() > s.persist.room:
		return proto.Errorf(proto.CodeQuotaExceeded, "systemd's fd store would hold %d fds for entries, more than it keeps (FileDescriptorStoreMax less 2 for the metadata is %d; fds of removed entries leave it once the next metadata is confirmed)", s.fdStoreNeedLocked(), s.persist.room)
	case old == nil && e.limited && len(s.entries) >= limit-cfg.Agent.AdminReserve(limit):
		return proto.Errorf(proto.CodeQuotaExceeded, "the agent holds %d entries; the last %d of its %d are kept for host administrators", len(s.entries), cfg.Agent.AdminReserve(limit), limit)
	}
	if e.limited {
		var u usage
		if p := s.byUID[e.acct]; p != nil {
			u = *p
		}
		if old != nil && old.limited && old.acct == e.acct {
			u.entries--
			if old.pinned {
				u.pinned--
			}
		}
		closing := s.closer.Pending(e.acct) // released fds whose close(2) has not returned
		switch {
		case u.entries+closing+1 > cfg.Agent.MaxEntriesPerUID:
			return proto.Errorf(proto.CodeQuotaExceeded, "uid %d holds %d entries and %d fds still being closed, its limit (max_entries_per_uid is %d)", e.acct, u.entries, closing, cfg.Agent.MaxEntriesPerUID)
		case e.pinned && u.pinned+1 > cfg.Agent.MaxPinnedPerUID:
			return proto.Errorf(proto.CodeQuotaExceeded, "uid %d holds %d pinned entries, its limit (max_pinned_per_uid is %d)", e.acct, u.pinned, cfg.Agent.MaxPinnedPerUID)
		}
	}
	// Like pids.max: the entry counts against its cgroup and every
	// ancestor, and every limit on the way must leave room.
	for p, ok := e.cgroup, true; ok; p, ok = cgroup.Parent(p) {
		var entries, pinned int
		if u := s.usage[p]; u != nil {
			entries, pinned = u.entries, u.pinned
		}
		if old != nil && within(old.cgroup, p) {
			entries--
			if old.pinned {
				pinned--
			}
		}
		if p == e.ownerCg {
			// An identity's pins count wherever it published them: a
			// container restarted under its name gets a new cgroup, not
			// a fresh quota.
			own := s.pins[e.owner]
			if old != nil && old.pinned {
				own--
			}
			pinned = max(pinned, own)
		}
		l := cfg.NodeLimits(p, p == e.ownerCg)
		if l.MaxEntries != policy.Unlimited && entries+1 > l.MaxEntries {
			return proto.Errorf(proto.CodeQuotaExceeded, "cgroup %s holds %d entries, its limit (%s is %d)", p, entries, l.EntriesSource, l.MaxEntries)
		}
		if e.pinned && l.MaxPinned != policy.Unlimited && pinned+1 > l.MaxPinned {
			return proto.Errorf(proto.CodeQuotaExceeded, "cgroup %s holds %d pinned entries, its limit (%s is %d)", p, pinned, l.PinnedSource, l.MaxPinned)
		}
	}
	return nil
}

// fdStoreNeedLocked is how many entry fds systemd's fd store would hold
// with one more fd: the entries', those of removed entries still waiting to
// leave it, and the new one. A replace is no different: the old entry's fd
// stays until the next confirmed metadata, beside the new one.
func (s *store) fdStoreNeedLocked() int {
	return len(s.entries) + s.persist.pendingRemovals() + 1
}

// within reports whether cgroup c is p or below it.
func within(c, p string) bool {
	return p == "/" || c == p || (strings.HasPrefix(c, p) && c[len(p)] == '/')
}

func (s *store) insertLocked(e *entry) {
	s.seq++
	e.sid = storedName(s.seq, e.owner, e.name)
	s.insertLockedNoPersist(e)
	if s.persist != nil {
		s.persist.added(e)
	}
}

func (s *store) insertLockedNoPersist(e *entry) {
	s.entries[e.key] = e
	if w := s.waiters[e.key]; w != nil {
		close(w.ch)
		delete(s.waiters, e.key)
	}
	if !e.expires.IsZero() {
		heap.Push(&s.exp, e)
		if s.exp[0] == e {
			s.timer.Reset(e.expires.Sub(s.now()))
		}
	}
	s.charge(e, 1)
	if e.watched() {
		set := s.owned[e.ownerCg]
		if set == nil {
			set = make(map[*entry]struct{})
			s.owned[e.ownerCg] = set
		}
		set[e] = struct{}{}
	}
}

// charge adds d to the usage of e's cgroup and all its ancestors, of its
// accounting uid and of its owner identity.
func (s *store) charge(e *entry, d int) {
	if e.limited {
		u := s.byUID[e.acct]
		if u == nil {
			u = &usage{}
			s.byUID[e.acct] = u
		}
		u.entries += d
		if e.pinned {
			u.pinned += d
		}
		if u.entries == 0 {
			delete(s.byUID, e.acct)
		}
	}
	if e.pinned {
		if s.pins[e.owner] += d; s.pins[e.owner] == 0 {
			delete(s.pins, e.owner)
		}
	}
	for p, ok := e.cgroup, true; ok; p, ok = cgroup.Parent(p) {
		u := s.usage[p]
		if u == nil {
			u = &usage{}
			s.usage[p] = u
		}
		u.entries += d
		if e.pinned {
			u.pinned += d
		}
		if p == e.ownerCg {
			u.owners += d
		}
		if u.entries == 0 {
			delete(s.usage, p)
		}
	}
}

// acquireOrWait is acquire, or, when there is no such entry, a channel
// that is closed when one is published under the name, and a function the
// caller must call when it stops waiting.
func (s *store) acquireOrWait(owner, name string) (*entry, <-chan struct{}, func()) {
	k := key{owner, name}
	if e := s.acquire(owner, name); e != nil {
		return e, nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[k]; e != nil {
		e.refs.Add(1)
		return e, nil, nil
	}
	if s.waiters == nil {
		s.waiters = make(map[key]*waiter)
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

// maxClosers bounds the threads that may sit in close(2) at once for
// released entries (a lingering socket, a stuck FUSE file); each owner uid
// has at most one of them.
const maxClosers = 16

// release drops a reference (acquire's, or the store's own after removing
// e). The last one hands the fd to the closer, keyed by the uid the entry
// counts against: a close(2) that blocks delays nobody else's work, and
// the owner's pending closes count against its limits.
func (s *store) release(e *entry) {
	if e.unref() {
		s.closer.Close(e.acct, e.fd)
	}
}

// releaseAll releases every entry of dead.
func (s *store) releaseAll(dead []*entry) {
	for _, e := range dead {
		s.release(e)
	}
}

// acquire returns the entry with a reference held for the caller, who must
// release it (store.release).
func (s *store) acquire(owner, name string) *entry {
	s.mu.RLock()
	e := s.entries[key{owner, name}]
	if e != nil {
		e.refs.Add(1)
	}
	s.mu.RUnlock()
	return e
}

// revoke removes owner:name if may, called under the store's lock, allows
// it. With shutdown, a socket entry is first shut down for reading and
// writing, which every holder's copy shares; other kinds are refused
// unchanged.
func (s *store) revoke(owner, name string, may func(*entry) error, shutdown bool) (sid string, err error) {
	s.mu.Lock()
	e := s.entries[key{owner, name}]
	if e == nil {
		s.mu.Unlock()
		return "", proto.Errorf(proto.CodeNotFound, "%s:%s is not published", owner, name)
	}
	if err := may(e); err != nil {
		s.mu.Unlock()
		return "", err
	}
	switch {
	case shutdown && e.kind != "socket":
		s.mu.Unlock()
		return "", proto.Errorf(proto.CodeInvalidRequest, "%s:%s is a %s, not a socket: shutdown cannot reach its other holders (revoke without it)", owner, name, e.kind)
	}
	if shutdown {
		if err := linux.Shutdown(e.fd, unix.SHUT_RDWR); err != nil && !errors.Is(err, unix.ENOTCONN) {
			s.mu.Unlock()
			return "", fmt.Errorf("shutdown %s:%s: %w", owner, name, err)
		}
	}
	s.removeLocked(e)
	s.mu.Unlock()
	s.release(e)
	return e.sid, nil
}

// removeLocked unlinks e and returns it; the caller releases the store's
// reference after unlocking.
func (s *store) removeLocked(e *entry) *entry {
	delete(s.entries, e.key)
	if e.heapIndex >= 0 {
		heap.Remove(&s.exp, e.heapIndex)
	}
	s.charge(e, -1)
	if s.persist != nil && !s.closed {
		s.persist.removed(e)
	}
	if len(s.tombs) == maxTombs {
		copy(s.tombs, s.tombs[1:])
		s.tombs = s.tombs[:maxTombs-1]
	}
	s.tombs = append(s.tombs, tombstone{key: e.key, kind: e.kind, dev: e.dev, ino: e.ino, removed: s.now()})
	if e.watched() {
		set := s.owned[e.ownerCg]
		delete(set, e)
		if len(set) == 0 {
			delete(s.owned, e.ownerCg)
		}
		s.watch.Remove(e.ownerCg)
	}
	return e
}

// dropOwned drops every unpinned entry of owner cgroup p and returns how
// many it dropped.
func (s *store) dropOwned(p string) int {
	var dead []*entry
	s.mu.Lock()
	for e := range s.owned[p] {
		dead = append(dead, s.removeLocked(e))
	}
	s.mu.Unlock()
	s.releaseAll(dead)
	if len(dead) > 0 {
		s.synced()
	}
	return len(dead)
}

// ownerEmptied drops the unpinned entries of owner cgroup p that were
// published before the emptying the watcher numbered epoch, and returns
// how many it dropped.
func (s *store) ownerEmptied(p string, epoch uint64) int {
	var dead []*entry
	s.mu.Lock()
	for e := range s.owned[p] {
		if e.epoch < epoch {
			dead = append(dead, s.removeLocked(e))
		}
	}
	s.mu.Unlock()
	s.releaseAll(dead)
	if len(dead) > 0 {
		s.synced()
	}
	return len(dead)
}

// expire drops every entry whose deadline has passed and re-arms the timer.
func (s *store) expire() {
	var dead []*entry
	s.mu.Lock()
	now := s.now()
	for len(s.exp) > 0 && !s.exp[0].expires.After(now) {
		dead = append(dead, s.removeLocked(s.exp[0]))
	}
	if len(s.exp) > 0 && !s.closed {
		s.timer.Reset(s.exp[0].expires.Sub(now))
	}
	s.mu.Unlock()
	s.releaseAll(dead)
	if len(dead) > 0 {
		s.synced()
	}
}

// synced brings systemd's copy of the metadata up to date, if there is
// one, and waits until systemd confirmed every change so far. An error
// means that changes made since the last confirmed sync may not survive a
// restart of the agent.
func (s *store) synced() error {
	if s.persist == nil {
		return nil
	}
	err := s.persist.sync()
	if err != nil {
		s.persist.log.Error("cannot update the stored metadata", "err", err)
	}
	return err
}

// durable syncs and reports whether the change to the entry stored as sid
// reached systemd's fd store and was confirmed.
func (s *store) durable(sid string) error {
	if s.persist == nil {
		return nil
	}
	err := s.synced()
	return errors.Join(s.persist.takeFailure(sid), err)
}

// unpublish removes e if it is still the entry under its name, for a
// publish that could not be made durable.
func (s *store) unpublish(e *entry) {
	s.mu.Lock()
	if s.entries[e.key] != e {
		s.mu.Unlock()
		return
	}
	s.removeLocked(e)
	s.mu.Unlock()
	s.release(e)
}

// snapshot returns the entries that visible admits, sorted by owner then
// name.
func (s *store) snapshot(visible func(*entry) bool) []*entry {
	s.mu.RLock()
	out := make([]*entry, 0, len(s.entries))
	for _, e := range s.entries {
		if visible(e) {
			out = append(out, e)
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return less(out[i].key, out[j].key) })
	return out
}

func less(a, b key) bool {
	if c := strings.Compare(a.owner, b.owner); c != 0 {
		return c < 0
	}
	return a.name < b.name
}

// node is one cgroup's usage, as status reports it.
type node struct {
	path string
	usage
}

// nodes returns the cgroups that hold entries, sorted by path, after the
// cursor (all if after is "").
func (s *store) nodes(after string) []node {
	s.mu.RLock()
	out := make([]node, 0, len(s.usage))
	for p, u := range s.usage {
		if after == "" || p > after {
			out = append(out, node{p, *u})
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out
}

func (s *store) len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.entries)
}

// close releases every entry; the store accepts no more publishes. It
// waits up to 2 s for the closes and returns, per uid, the fds still in
// close(2) then (the process exits next; the kernel closes what is left).
func (s *store) close() (stuck map[uint32]int, err error) {
	var dead []*entry
	s.mu.Lock()
	s.closed = true
	s.timer.Stop()
	for _, e := range s.entries {
		dead = append(dead, s.removeLocked(e))
	}
	s.mu.Unlock()
	s.releaseAll(dead)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.closer.Stop(ctx)
}

// expiryHeap orders entries by deadline (container/heap).
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex = i
	h[j].heapIndex = j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.heapIndex = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.heapIndex = -1
	*h = old[:len(old)-1]
	return e
}
