package agent

import (
	"container/heap"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

type key struct{ owner, name string }

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
	cgroup    string
	uid       uint32 // the publisher's uid: only it or root may replace or revoke
	published time.Time
	expires   time.Time // zero: never
	heapIndex int       // index in the expiry heap, -1 when absent
}

func newEntry(owner, name string, fd int) *entry {
	e := &entry{key: key{owner, name}, fd: fd, heapIndex: -1}
	e.refs.Store(1)
	return e
}

// release drops one reference; the last one closes the fd.
func (e *entry) release() {
	if e.refs.Add(-1) == 0 {
		linux.Close(e.fd)
	}
}

// admits reports whether the entry's audience lets consumer acquire it.
func (e *entry) admits(consumer string) bool {
	if len(e.allow) == 0 {
		return true
	}
	for _, p := range e.allow {
		if p.Match(consumer) {
			return true
		}
	}
	return false
}

// store maps (owner, name) to entries.
type store struct {
	mu      sync.RWMutex
	entries map[key]*entry
	exp     expiryHeap
	timer   *time.Timer
	closed  bool
	now     func() time.Time
}

func newStore() *store {
	s := &store{entries: make(map[key]*entry), now: time.Now}
	s.timer = time.AfterFunc(time.Hour, s.expire)
	s.timer.Stop()
	return s
}

// publish inserts e, taking ownership of its fd whatever the outcome.
// Replacing or refusing releases fds only after the lock is dropped: close(2)
// can block (SO_LINGER sockets, FUSE files) and must not stall the store.
func (s *store) publish(e *entry, replace bool, max int) error {
	var dead []*entry
	defer func() { releaseAll(dead) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.entries[e.key]
	switch {
	case s.closed:
		dead = append(dead, e)
		return proto.Errorf(proto.CodeBusy, "agent is shutting down")
	case old != nil && !replace:
		dead = append(dead, e)
		return proto.Errorf(proto.CodeExists, "%s:%s is already published (revoke it first, or publish with replace)", e.owner, e.name)
	case old != nil && old.uid != e.uid && e.uid != 0:
		dead = append(dead, e)
		return proto.Errorf(proto.CodePermissionDenied, "%s:%s was published by uid %d; only that uid or root may replace it", e.owner, e.name, old.uid)
	case old == nil && len(s.entries) >= max:
		dead = append(dead, e)
		return proto.Errorf(proto.CodeQuotaExceeded, "agent store is full: %d of %d entries", len(s.entries), max)
	}
	if old != nil {
		dead = append(dead, s.removeLocked(old))
	}
	s.entries[e.key] = e
	if !e.expires.IsZero() {
		heap.Push(&s.exp, e)
		if s.exp[0] == e {
			s.timer.Reset(e.expires.Sub(s.now()))
		}
	}
	return nil
}

// acquire returns the entry with a reference held for the caller, who must
// release it.
func (s *store) acquire(owner, name string) *entry {
	s.mu.RLock()
	e := s.entries[key{owner, name}]
	if e != nil {
		e.refs.Add(1)
	}
	s.mu.RUnlock()
	return e
}

// revoke removes owner:name on behalf of uid: the publishing uid or root.
func (s *store) revoke(owner, name string, uid uint32) error {
	s.mu.Lock()
	e := s.entries[key{owner, name}]
	switch {
	case e == nil:
		s.mu.Unlock()
		return proto.Errorf(proto.CodeNotFound, "%s:%s is not published", owner, name)
	case e.uid != uid && uid != 0:
		s.mu.Unlock()
		return proto.Errorf(proto.CodePermissionDenied, "%s:%s was published by uid %d; only that uid or root may revoke it", owner, name, e.uid)
	}
	s.removeLocked(e)
	s.mu.Unlock()
	e.release()
	return nil
}

// removeLocked unlinks e and returns it; the caller releases the store's
// reference after unlocking.
func (s *store) removeLocked(e *entry) *entry {
	delete(s.entries, e.key)
	if e.heapIndex >= 0 {
		heap.Remove(&s.exp, e.heapIndex)
	}
	return e
}

func releaseAll(dead []*entry) {
	for _, e := range dead {
		e.release()
	}
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
	releaseAll(dead)
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

func (s *store) len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.entries)
}

// close releases every entry; the store accepts no more publishes.
func (s *store) close() {
	var dead []*entry
	s.mu.Lock()
	s.closed = true
	s.timer.Stop()
	for _, e := range s.entries {
		dead = append(dead, s.removeLocked(e))
	}
	s.mu.Unlock()
	releaseAll(dead)
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
