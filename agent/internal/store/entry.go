package store

import (
	"math"
	"strings"
	"sync/atomic"
	"time"
	"unique"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
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

// Spec describes an entry to publish or restore. NewEntry copies it.
type Spec struct {
	Owner, Name string
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
	// Restrict: for an entry, what each consumer's grant withholds
	// (RestrictOwn: consumers get grants); for a grant, what its
	// description withholds.
	Restrict proto.Restrict
	// Grantee and GranteeUID: a grant's consumer. A Spec with a Grantee
	// makes a grant; its Name is NAME#gN..., and Restore links it to its
	// parent.
	Grantee    string
	GranteeUID uint32
}

// Entry is one stored fd, described by the Spec it was made from, which
// never changes.
//
// An entry is what the agent holds per stored fd, so it is kept small: 112
// bytes, and its name. What the entries of one publisher share (owner,
// cgroups, kind) is one interned handle, times are integers, and what few
// entries have (allow patterns) hangs off a pointer that is nil for the
// rest.
type Entry struct {
	name      string
	origin    unique.Handle[origin]
	more      *more  // nil unless the entry has allow patterns or an irregular id
	ino       uint64 // with dev, the file's identity
	published int64  // Unix nanoseconds
	expires   int64  // nanoseconds after monoBase, on the monotonic clock; 0: never
	seq       uint64 // the N of the entry's id, once published or restored
	epoch     uint64 // the owner cgroup's watch epoch at publish (watched entries)
	acquired  atomic.Uint64
	uid, acct uint32
	fd        linux.FD
	refs      atomic.Int32
	heapIndex int32 // index in the expiry heap, -1 when absent
	ownIndex  int32 // index in its owner cgroup's watched entries, -1 when absent
	dev       uint32
	flags     uint8
}

// origin is what the entries of one publisher have in common: a few
// values for many entries, interned (unique.Make).
type origin struct {
	owner, cgroup, ownerCgroup, kind string
}

// more is what few entries have.
type more struct {
	allow    []policy.Pattern
	id       string // an id restored as recorded, which EntryID would not give
	restrict proto.Restrict
	grant    *grantInfo // a grant's; nil for an entry
	grants   []*Entry   // the grants derived from this entry or grant
}

const (
	flagPinned = 1 << iota
	flagLimited
	// flagEnforce: removed by a revoke (asked for, expired, its owner
	// gone) while an Enforcer is set; set under the store's lock before
	// the removal, read by whoever releases the store's reference.
	flagEnforce
)

// monoBase is what an entry's expiry counts from, so that expiry follows
// the monotonic clock, as a time.Time with a monotonic reading does.
var monoBase = time.Now()

// NewEntry returns an unpublished entry described by sp, owning fd, with
// one reference: its creator's, which Publish or Restore take over (or
// Release drops).
func NewEntry(sp *Spec, fd int) *Entry {
	e := &Entry{
		name:      sp.Name,
		origin:    unique.Make(origin{sp.Owner, sp.Cgroup, sp.OwnerCgroup, sp.Kind}),
		ino:       sp.Ino,
		dev:       uint32(sp.Dev), // a Linux dev_t has 32 bits (MAJOR 12, MINOR 20)
		uid:       sp.UID,
		acct:      sp.Acct,
		heapIndex: -1,
		ownIndex:  -1,
	}
	if !sp.Published.IsZero() {
		e.published = sp.Published.UnixNano()
	}
	if !sp.Expires.IsZero() {
		e.expires = max(int64(sp.Expires.Sub(monoBase)), math.MinInt64+1)
		if e.expires == 0 {
			e.expires = -1 // at monoBase itself: a nanosecond early, as 0 means never
		}
	}
	if sp.Pinned {
		e.flags |= flagPinned
	}
	if sp.Limited {
		e.flags |= flagLimited
	}
	if len(sp.Allow) > 0 {
		e.extra().allow = sp.Allow
	}
	if sp.Restrict != 0 {
		e.extra().restrict = sp.Restrict
	}
	if sp.Grantee != "" {
		e.extra().grant = &grantInfo{grantee: sp.Grantee, granteeUID: sp.GranteeUID}
	}
	e.fd.Own(fd)
	e.refs.Store(1)
	return e
}

func (e *Entry) extra() *more {
	if e.more == nil {
		e.more = &more{}
	}
	return e.more
}

// Owner is the identity that owns the entry.
func (e *Entry) Owner() string { return e.origin.Value().owner }

// Name is the entry's name.
func (e *Entry) Name() string { return e.name }

// Key is the entry's owner and name.
func (e *Entry) Key() Key { return Key{e.Owner(), e.name} }

// Pinned reports whether the entry outlives its owner cgroup's processes.
func (e *Entry) Pinned() bool { return e.flags&flagPinned != 0 }

// Limited reports whether the entry counts against Acct's per-uid limits.
func (e *Entry) Limited() bool { return e.flags&flagLimited != 0 }

// Enforced reports whether e was removed by a revoke the Enforcer makes
// hold in the kernel (read under the store's lock, as the Observer does).
func (e *Entry) Enforced() bool { return e.flags&flagEnforce != 0 }

// Allow is the patterns that narrow who may acquire the entry.
func (e *Entry) Allow() []policy.Pattern {
	if e.more == nil {
		return nil
	}
	return e.more.allow
}

// Kind is the kind of fd (linux.FdKind).
func (e *Entry) Kind() string { return e.origin.Value().kind }

// Cgroup is the publisher's cgroup.
func (e *Entry) Cgroup() string { return e.origin.Value().cgroup }

// OwnerCgroup is the owner cgroup, whose life an unpinned entry follows.
func (e *Entry) OwnerCgroup() string { return e.origin.Value().ownerCgroup }

// UID is the publisher's uid.
func (e *Entry) UID() uint32 { return e.uid }

// Acct is the uid the entry's per-uid limits count against.
func (e *Entry) Acct() uint32 { return e.acct }

// File is the device and inode of the entry's file.
func (e *Entry) File() (dev, ino uint64) { return uint64(e.dev), e.ino }

// Published is when the entry was published.
func (e *Entry) Published() time.Time {
	if e.published == 0 {
		return time.Time{}
	}
	return time.Unix(0, e.published)
}

// Expires is when the entry expires; the zero time if never.
func (e *Entry) Expires() time.Time {
	if e.expires == 0 {
		return time.Time{}
	}
	return monoBase.Add(time.Duration(e.expires))
}

// expiresBy reports whether the entry has a deadline at or before now.
func (e *Entry) expiresBy(now time.Time) bool {
	return e.expires != 0 && e.expires <= int64(now.Sub(monoBase))
}

// FD is the entry's fd, for a caller holding a reference.
func (e *Entry) FD() int { return e.fd.Int() }

// ID is the entry's id (EntryID), once published or restored; "" before.
func (e *Entry) ID() string {
	switch {
	case e.more != nil && e.more.id != "":
		return e.more.id
	case e.seq == 0:
		return ""
	}
	return EntryID(e.seq, e.Owner(), e.name)
}

// Number is the N of the entry's id, unique for the store's whole life
// (0 before it is published): the ledger's and the kernel's id of its
// revocation.
func (e *Entry) Number() uint64 { return e.seq }

// Acquired counts the acquires of the entry.
func (e *Entry) Acquired() uint64 { return e.acquired.Load() }

// CountAcquire counts one acquire.
func (e *Entry) CountAcquire() { e.acquired.Add(1) }

// Target describes the entry to the authorization decision.
func (e *Entry) Target() *policy.Target {
	o := e.origin.Value()
	r := e.Root()
	t := &policy.Target{Owner: o.owner, Name: r.name, UID: e.uid, Allow: r.Allow(), Kind: r.Kind(), Restrict: r.Restrict() &^ proto.RestrictKeep}
	for _, d := range e.Delegators() {
		t.Delegators = append(t.Delegators, policy.Grantee(d))
	}
	return t
}

// watched reports whether the entry follows its owner cgroup's life.
// A grant lives as long as its parent, pinned or not: it is never watched
// itself.
func (e *Entry) watched() bool {
	return !e.Pinned() && !e.IsGrant() && cgroup.Watchable(e.OwnerCgroup())
}

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
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex = int32(i)
	h[j].heapIndex = int32(j)
}
func (h *expiryHeap) Push(x any) {
	e := x.(*Entry)
	e.heapIndex = int32(len(*h))
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
