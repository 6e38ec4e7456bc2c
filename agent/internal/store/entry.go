package store

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
)

// Key names an entry: its owner identity and its name.
type Key struct{ Owner, Name string }

// Less orders keys by owner, then name.
func (k Key) Less(o Key) bool {
	if c := strings.Compare(k.Owner, o.Owner); c != 0 {
		return c < 0
	}
	return k.Name < o.Name
}

// Entry is one stored fd. The exported fields are set before the entry is
// published and never change afterwards.
type Entry struct {
	Key
	Pinned      bool
	Allow       []policy.Pattern
	Kind        string
	Cgroup      string // the publisher's cgroup: charged for quotas with all its ancestors
	OwnerCgroup string // the owner cgroup (cgroup.Owner): the entry lives while it has processes, unless pinned
	UID         uint32 // the publisher's uid: only it or a host administrator may replace or revoke
	Acct        uint32 // the uid its per-uid limits count against
	Limited     bool   // counted against Acct's limits (the publisher was no host administrator)
	Dev, Ino    uint64 // the file's identity, for audit after the fd is gone
	Published   time.Time
	Expires     time.Time // zero: never

	fd        linux.FD
	refs      atomic.Int32
	acquired  atomic.Uint64
	id        string // EntryID, given at publish
	epoch     uint64 // the owner cgroup's watch epoch at publish (unpinned entries)
	heapIndex int    // index in the expiry heap, -1 when absent
}

// NewEntry returns an unpublished entry owning fd, with one reference: its
// creator's, which Publish or Restore take over (or Release drops).
func NewEntry(owner, name string, fd int) *Entry {
	e := &Entry{Key: Key{owner, name}, heapIndex: -1}
	e.fd.Own(fd)
	e.refs.Store(1)
	return e
}

// FD is the entry's fd, for a caller holding a reference.
func (e *Entry) FD() int { return e.fd.Int() }

// ID is the entry's id (EntryID), once published or restored.
func (e *Entry) ID() string { return e.id }

// Acquired counts the acquires of the entry.
func (e *Entry) Acquired() uint64 { return e.acquired.Load() }

// CountAcquire counts one acquire.
func (e *Entry) CountAcquire() { e.acquired.Add(1) }

// Target describes the entry to the authorization decision.
func (e *Entry) Target() *policy.Target {
	return &policy.Target{Owner: e.Owner, Name: e.Name, UID: e.UID, Allow: e.Allow, Kind: e.Kind}
}

// watched reports whether the entry follows its owner cgroup's life.
func (e *Entry) watched() bool { return !e.Pinned && cgroup.Watchable(e.OwnerCgroup) }

// unref drops one reference and reports whether it was the last.
func (e *Entry) unref() bool { return e.refs.Add(-1) == 0 }

// Tombstone is a removed entry: audit reports processes that still hold
// the same file. Its fd is closed, so an open file description can no
// longer be compared; the file's inode is.
type Tombstone struct {
	Key
	Kind     string
	Dev, Ino uint64
	Removed  time.Time
}

// expiryHeap orders entries by deadline (container/heap).
type expiryHeap []*Entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].Expires.Before(h[j].Expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex = i
	h[j].heapIndex = j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*Entry)
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
