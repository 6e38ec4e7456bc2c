package store

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// Grants.
//
// An entry published per consumer (proto.RestrictOwn) hands each consumer
// (identity and uid) a grant: a description of its own, derived from the
// entry's (a reopen, a detached mount), which the store keeps as an entry
// of its own. A grant is an entry named NAME#gN under the entry's owner
// (GrantSep is no name character, so no request names one directly),
// with the consumer it was made for, and the grants delegated from it as
// NAME#gN#gM. So grants persist, are handed over, counted in quotas,
// expire and follow their owner cgroup exactly as entries do; and
// removing an entry or a grant removes every grant derived from it.

// grantInfo is what a grant has beyond an entry.
type grantInfo struct {
	grantee    string // the identity the grant was made for
	granteeUID uint32 // and its uid
	parent     *Entry // the entry or grant it was derived from
}

// ErrNotOurs: a checked fd is none of an entry's descriptions.
var ErrNotOurs = fmt.Errorf("not one of the entry's descriptions")

// ErrRevoked: the consumer's grant of the entry was revoked.
var ErrRevoked = fmt.Errorf("grant revoked")

// ErrNotDerivable: a description of its own cannot be made for the
// entry's kind, or not with the restrictions asked for.
var ErrNotDerivable = fmt.Errorf("no description of its own can be made")

// Derivable reports why no per-consumer description can be made of an
// entry of kind with restrictions r, or nil.
func Derivable(kind string, r proto.Restrict) error {
	switch kind {
	case "memfd", "file", "tmpfile":
		if r&(proto.RestrictNoSuid|proto.RestrictNoDev|proto.RestrictNoExec) != 0 {
			return errorf(ErrNotDerivable, "nosuid, nodev and noexec restrict directories; a %s takes only read-only", kind)
		}
		return nil
	case "dir":
		return nil
	}
	return errorf(ErrNotDerivable, "a %s cannot be reopened: every holder shares its one description (publish it without per-consumer; revoke it as a whole, with shutdown for a socket)", kind)
}

// TreeCloner makes a detached mount of the file or directory fd with the
// mount attributes attrs and returns a read-only fd at its root (see
// linux.Detached), which the caller owns.
type TreeCloner func(fd int, attrs uint64, dir bool) (int, error)

// SetTreeCloner sets how the store clones directories and files for
// grants (the default: linux.Detached, in the agent's own mount
// namespace).
func (s *Store) SetTreeCloner(f TreeCloner) {
	s.mu.Lock()
	s.cloneTree = f
	s.mu.Unlock()
}

// clone is the store's TreeCloner.
func (s *Store) clone(fd int, attrs uint64, dir bool) (int, error) {
	s.mu.RLock()
	f := s.cloneTree
	s.mu.RUnlock()
	if f == nil {
		f = linux.Detached
	}
	return f(fd, attrs, dir)
}

// sealedReadOnly are the seals a memfd needs for a read-only grant: a
// reopen through /proc/self/fd gets a writable description of any memfd
// (its inode is 0777), so writes (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE),
// truncation and growth (F_SEAL_SHRINK, F_SEAL_GROW) and further seals
// (F_SEAL_SEAL) must all be sealed off.
const (
	sealWrites   = 0x0008 | 0x0010          // F_SEAL_WRITE, F_SEAL_FUTURE_WRITE: either
	sealSizeSeal = 0x0001 | 0x0002 | 0x0004 // F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW: all
)

// derive makes a description of its own of the file fd refers to, an
// entry of kind, with restrictions r. The caller owns the fd returned.
func (s *Store) derive(fd int, kind string, r proto.Restrict) (int, error) {
	if err := Derivable(kind, r); err != nil {
		return -1, err
	}
	if kind == "dir" {
		var attrs uint64
		if r&proto.RestrictReadOnly != 0 {
			attrs |= linux.MountReadOnly
		}
		if r&proto.RestrictNoSuid != 0 {
			attrs |= linux.MountNoSuid
		}
		if r&proto.RestrictNoDev != 0 {
			attrs |= linux.MountNoDev
		}
		if r&proto.RestrictNoExec != 0 {
			attrs |= linux.MountNoExec
		}
		n, err := s.clone(fd, attrs, true)
		if err != nil {
			return -1, errorf(ErrNotDerivable, "the directory cannot be cloned as a detached mount (%v): the agent clones directories of the mount namespace it was started in, not of a container's", err)
		}
		return n, nil
	}
	readOnly := r&proto.RestrictReadOnly != 0
	switch {
	case readOnly && kind == "memfd":
		// A read-only description of a memfd reopens read-write through
		// /proc/self/fd unless the memfd is sealed.
		seals, err := linux.Seals(fd)
		if err != nil || seals&sealWrites == 0 || seals&sealSizeSeal != sealSizeSeal {
			return -1, errorf(ErrNotDerivable, "a read-only grant of a memfd stays read-only only if the memfd is sealed against writes (F_SEAL_FUTURE_WRITE, with which the publisher keeps writing through its shared mappings, or F_SEAL_WRITE), resizing (F_SEAL_SHRINK, F_SEAL_GROW) and further seals (F_SEAL_SEAL): a holder can reopen any memfd writable through /proc")
		}
	case readOnly:
		// A regular file's read-only description on a read-only bind
		// mount of the file alone: a reopen through /proc or fchmod
		// cannot make it writable, whatever the inode's mode.
		n, err := s.clone(fd, linux.MountReadOnly|linux.MountNoSuid|linux.MountNoDev|linux.MountNoExec, false)
		if err != nil {
			return -1, errorf(ErrNotDerivable, "the file cannot be bound read-only (%v): the agent binds files of the mount namespace it was started in, not of a container's", err)
		}
		return n, nil
	}
	n, err := linux.Reopen(fd, readOnly)
	if err != nil {
		return -1, errorf(ErrNotDerivable, "the file cannot be reopened: %v", err)
	}
	return n, nil
}

// IsGrant reports whether e is a grant rather than a published entry.
func (e *Entry) IsGrant() bool { return e.more != nil && e.more.grant != nil }

// Restrict is what e's description withholds (a grant's), or what each
// consumer's grant of it withholds (a published entry's).
func (e *Entry) Restrict() proto.Restrict {
	if e.more == nil {
		return 0
	}
	return e.more.restrict
}

// Grantee returns the identity and uid a grant was made for.
func (e *Entry) Grantee() (string, uint32) {
	if !e.IsGrant() {
		return "", 0
	}
	return e.more.grant.grantee, e.more.grant.granteeUID
}

// Parent is the entry or grant a grant was derived from; nil for an entry.
func (e *Entry) Parent() *Entry {
	if !e.IsGrant() {
		return nil
	}
	return e.more.grant.parent
}

// Root is the published entry e is, or that the grant e derives from.
func (e *Entry) Root() *Entry {
	for e.IsGrant() {
		e = e.more.grant.parent
	}
	return e
}

// GrantID is a grant's id ("g7"), "" for an entry.
func (e *Entry) GrantID() string {
	if !e.IsGrant() {
		return ""
	}
	return e.name[strings.LastIndexByte(e.name, proto.GrantSep)+1:]
}

// Depth is 0 for an entry, 1 for a grant of it, 2 for one delegated from
// that, and so on.
func (e *Entry) Depth() int { return strings.Count(e.name, string(proto.GrantSep)) }

// BaseName is the name of the entry e is or derives from.
func (e *Entry) BaseName() string {
	if i := strings.IndexByte(e.name, proto.GrantSep); i >= 0 {
		return e.name[:i]
	}
	return e.name
}

// Delegators returns the grantees (identity, uid) of the grants e was
// delegated from, nearest first: who may revoke e besides its owner.
func (e *Entry) Delegators() []Grantee {
	var out []Grantee
	for p := e.Parent(); p != nil && p.IsGrant(); p = p.Parent() {
		id, uid := p.Grantee()
		out = append(out, Grantee{id, uid})
	}
	return out
}

// AnyUID is the uid of a delegated grant: it is for its identity, any
// uid in it (the delegator cannot know the delegate's).
const AnyUID = ^uint32(0)

// Grantee is an identity with its uid: whom a grant is for.
type Grantee struct {
	Identity string
	UID      uint32
}

// GrantName is the name a grant numbered n of parent's is stored under.
func GrantName(parent string, n uint64) string {
	return parent + string(proto.GrantSep) + proto.GrantPrefix + strconv.FormatUint(n, 10)
}

// isGrantName reports whether name is a grant's (NAME#gN...).
func isGrantName(name string) bool { return strings.IndexByte(name, proto.GrantSep) >= 0 }

// ParentName is the name of the entry or grant that the grant named name
// derives from, and false if name is no grant's.
func ParentName(name string) (string, bool) {
	i := strings.LastIndexByte(name, proto.GrantSep)
	if i < 0 {
		return "", false
	}
	return name[:i], true
}

// GrantOptions are a new grant's terms.
type GrantOptions struct {
	Grantee  Grantee
	Restrict proto.Restrict // at least the parent's; RestrictOwn is implied
	Expires  time.Time      // zero: the parent's; never later than it
	// Delegated: the grant is made for another identity than its parent's
	// grantee (a delegation), not for the parent's consumer itself.
	Delegated bool
	// Charge is whom the grant counts against in quotas and per-uid
	// limits: the consumer that acquires it, or the delegator. Zero: the
	// parent's.
	Charge Charge
}

// Charge is a grant's account: the cgroup whose subtree quotas it counts
// in (with every ancestor), the uid whose limits, and whether those apply
// (not to a host administrator).
type Charge struct {
	Cgroup  string
	Acct    uint32
	Limited bool
}

// Grant returns the grant of parent (a per-consumer entry, or a grant to
// delegate from) for o.Grantee with o.Restrict, making it if there is none,
// with a reference held for the caller (Release). A new grant owns a
// description made by Derive from parent's; made outside the store's lock
// (a reopen can block on a stuck file system), it is dropped if another
// request made the same grant meanwhile. created reports a new grant,
// which the caller makes durable (or Unpublish).
func (s *Store) Grant(parent *Entry, o GrantOptions, l *Limits) (g *Entry, created bool, err error) {
	o.Restrict |= parent.Restrict() | proto.RestrictOwn
	o.Restrict &^= proto.RestrictKeep
	if g, err := s.findGrant(parent, o); g != nil || err != nil {
		return g, false, err
	}
	if !o.Delegated && parent.IsGrant() {
		return nil, false, errorf(ErrNotDerivable, "%s:%s is a grant, not an entry: a grant derives from a grant only by a delegation", parent.Owner(), parent.Name())
	}
	if err := Derivable(parent.Kind(), o.Restrict); err != nil {
		return nil, false, err
	}
	depth := parent.Depth() + 1
	if depth > l.MaxGrantDepth {
		return nil, false, errorf(ErrQuota, "%s:%s is a grant %d deep; delegations go at most %d deep (max_grant_depth)", parent.Owner(), parent.BaseName(), parent.Depth(), l.MaxGrantDepth)
	}
	// The description derives from the published entry's own, restricted
	// by everything on the way: a detached mount cannot be cloned again,
	// and a grant's restrictions include its parent's.
	root := parent.Root()
	fd, err := s.derive(root.FD(), root.Kind(), o.Restrict)
	if err != nil {
		return nil, false, err
	}
	kind, dev, ino, _ := linux.DescribeFD(fd)
	now := s.clock.Now()
	// Never pinned itself: a grant lives as long as its parent does.
	sp := Spec{
		Owner: parent.Owner(), Kind: kind,
		Cgroup: parent.Cgroup(), OwnerCgroup: parent.OwnerCgroup(),
		UID: parent.UID(), Acct: parent.Acct(), Limited: parent.Limited(),
		Dev: dev, Ino: ino, Published: now, Expires: parent.Expires(),
		Restrict: o.Restrict, Grantee: o.Grantee.Identity, GranteeUID: o.Grantee.UID,
	}
	if o.Charge.Cgroup != "" {
		sp.Cgroup, sp.Acct, sp.Limited = o.Charge.Cgroup, o.Charge.Acct, o.Charge.Limited
	}
	if !o.Expires.IsZero() && (sp.Expires.IsZero() || o.Expires.Before(sp.Expires)) {
		sp.Expires = o.Expires
	}
	g = NewEntry(&sp, fd)
	var dead []*Entry
	defer func() { s.ReleaseAll(dead) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.entries.get(parent.Owner(), parent.name) != parent {
		dead = append(dead, g)
		return nil, false, errorf(ErrNotFound, "%s:%s is no longer published", parent.Owner(), parent.BaseName())
	}
	if old, err := s.findGrantLocked(parent, o); old != nil || err != nil {
		dead = append(dead, g)
		if old != nil {
			old.refs.Add(1)
		}
		return old, false, err
	}
	if n := len(parent.extra().grants); n >= l.MaxGrants {
		dead = append(dead, g)
		return nil, false, errorf(ErrQuota, "%s:%s has %d grants, its limit (max_grants)", parent.Owner(), parent.name, n)
	}
	s.seq++
	g.seq = s.seq
	g.name = GrantName(parent.name, s.seq)
	g.more.grant.parent = parent
	if err := s.admitLocked(g, nil, false, l); err != nil {
		dead = append(dead, g)
		return nil, false, err
	}
	s.insertLocked(g)
	if s.obs != nil {
		s.obs.Added(g)
	}
	g.refs.Add(1)
	return g, true, nil
}

// findGrant returns, with a reference, parent's grant for o's grantee
// with o's restrictions, or nil; ErrRevoked if the grantee's grant of it
// was revoked.
func (s *Store) findGrant(parent *Entry, o GrantOptions) (*Entry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, err := s.findGrantLocked(parent, o)
	if g != nil {
		g.refs.Add(1)
	}
	return g, err
}

func (s *Store) findGrantLocked(parent *Entry, o GrantOptions) (*Entry, error) {
	if parent.more == nil {
		return nil, nil
	}
	for _, g := range parent.more.grants {
		gi := g.more.grant
		if gi.grantee != o.Grantee.Identity || gi.granteeUID != o.Grantee.UID {
			continue
		}
		if g.more.restrict&proto.RestrictRevoked != 0 {
			return nil, errorf(ErrRevoked, "%s (uid %d) had grant %s of %s:%s, which was revoked: it gets no other until the entry is published anew", gi.grantee, gi.granteeUID, g.GrantID(), parent.Owner(), parent.BaseName())
		}
		if g.more.restrict == o.Restrict {
			return g, nil
		}
	}
	return nil, nil
}

// Delegated returns, with a reference, a grant of the entry owner:name
// delegated to grantee, or nil. A grantee with several (from several
// delegators) gets the first made.
func (s *Store) Delegated(owner, name string, grantee Grantee) *Entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.entries.get(owner, name)
	if e == nil {
		return nil
	}
	var found *Entry
	walkGrants(e, func(g *Entry) bool {
		if gi := g.more.grant; g.Depth() >= 2 && g.more.restrict&proto.RestrictRevoked == 0 && gi.grantee == grantee.Identity && (gi.granteeUID == grantee.UID || gi.granteeUID == AnyUID) {
			found = g
			return false
		}
		return true
	})
	if found != nil {
		found.refs.Add(1)
	}
	return found
}

// walkGrants calls f for every grant derived from e, parents before
// children, until f returns false.
func walkGrants(e *Entry, f func(*Entry) bool) bool {
	if e.more == nil {
		return true
	}
	for _, g := range e.more.grants {
		if !f(g) || !walkGrants(g, f) {
			return false
		}
	}
	return true
}

// Which returns, with a reference, the entry owner:name itself or the
// grant of it whose description fd (the caller's) is: asked of the kernel
// (F_DUPFD_QUERY, or kcmp before Linux 6.10; both fds in the agent's
// table). ErrNotFound if there is
// no such entry, ErrNotOurs if fd is none of its descriptions. may decides
// first, under the lock, whether the caller may ask.
func (s *Store) Which(owner, name string, fd int, may func(*Entry) error) (*Entry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.entries.get(owner, name)
	if e == nil {
		return nil, errorf(ErrNotFound, "%s:%s is not published", owner, name)
	}
	if err := may(e); err != nil {
		return nil, err
	}
	var found *Entry
	var qerr error
	same := func(x *Entry) bool {
		ok, err := linux.SameDescription(x.FD(), fd)
		if err != nil {
			qerr = err
			return false
		}
		return ok
	}
	if same(e) {
		found = e
	} else if qerr == nil {
		walkGrants(e, func(g *Entry) bool {
			if same(g) {
				found = g
			}
			return found == nil && qerr == nil
		})
	}
	switch {
	case qerr != nil:
		return nil, fmt.Errorf("compare descriptions: %w", qerr)
	case found == nil:
		return nil, errorf(ErrNotOurs, "the fd is not %s:%s nor any of its grants", owner, name)
	}
	found.refs.Add(1)
	return found, nil
}

// Grants returns the grants derived from e, parents before children, for
// a caller that holds no lock; their fields may be read, not their fds
// used.
func (s *Store) Grants(e *Entry) []*Entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*Entry
	walkGrants(e, func(g *Entry) bool { out = append(out, g); return true })
	return out
}

// RevokeGrant removes the grant id of the entry owner:name and every grant
// derived from it, if may (called under the lock with the grant) allows,
// and returns the grant's entry id and how many grants went. A consumer's
// own grant (not a delegated one) is replaced, in the same step, by a
// marker (RestrictRevoked, an empty sealed memfd of its own) that refuses
// the consumer the entry until it is published anew: otherwise policy
// would give it a new grant at its next acquire. A marker itself is not
// revoked again.
func (s *Store) RevokeGrant(owner, name, id string, may func(g *Entry) error) (string, int, error) {
	mfd, merr := linux.SealedMemfd("capd-revoked-grant", nil)
	if merr != nil {
		return "", 0, fmt.Errorf("revoke grant %s: %w", id, merr)
	}
	marker := -1
	defer func() {
		if marker >= 0 {
			linux.Close(marker)
		}
	}()
	marker = mfd
	s.mu.Lock()
	e := s.entries.get(owner, name)
	if e == nil {
		s.mu.Unlock()
		return "", 0, errorf(ErrNotFound, "%s:%s is not published", owner, name)
	}
	var g *Entry
	walkGrants(e, func(x *Entry) bool {
		if x.GrantID() == id {
			g = x
		}
		return g == nil
	})
	if g == nil || g.Restrict()&proto.RestrictRevoked != 0 {
		s.mu.Unlock()
		return "", 0, errorf(ErrNotFound, "%s:%s has no grant %s in force", owner, name, id)
	}
	if err := may(g); err != nil {
		s.mu.Unlock()
		return "", 0, err
	}
	parent := g.Parent()
	dead := s.revokeLocked(g, nil)
	n := len(dead)
	if g.Depth() == 1 {
		dead = s.markRevokedLocked(parent, g, marker, dead)
		marker = -1 // the marker's entry owns it now
	}
	s.mu.Unlock()
	s.ReleaseAll(dead)
	return g.ID(), n, nil
}

// markRevokedLocked puts the marker of revoked grant g in its place: an
// entry that owns fd and refuses g's grantee a new grant of parent.
func (s *Store) markRevokedLocked(parent, g *Entry, fd int, dead []*Entry) []*Entry {
	grantee, uid := g.Grantee()
	dev, ino, _ := linux.FileID(fd)
	sp := Spec{
		Owner: parent.Owner(), Kind: "memfd",
		Cgroup: g.Cgroup(), OwnerCgroup: parent.OwnerCgroup(),
		UID: parent.UID(), Acct: g.Acct(), Limited: g.Limited(),
		Dev: dev, Ino: ino, Published: s.clock.Now(), Expires: parent.Expires(),
		Restrict: g.Restrict() | proto.RestrictRevoked, Grantee: grantee, GranteeUID: uid,
	}
	m := NewEntry(&sp, fd)
	s.seq++
	m.seq = s.seq
	m.name = GrantName(parent.name, s.seq)
	m.more.grant.parent = parent
	// Not admitted against the quotas: it takes the place of the grant it
	// marks, which counted, with the same account.
	s.insertLocked(m)
	if s.obs != nil {
		s.obs.Added(m)
	}
	return dead
}

// linkGrantLocked makes g one of its parent's grants.
func linkGrantLocked(g *Entry) {
	p := g.more.grant.parent
	p.extra().grants = append(p.more.grants, g)
}

// unlinkGrantLocked removes g from its parent's grants.
func unlinkGrantLocked(g *Entry) {
	p := g.more.grant.parent
	if i := slices.Index(p.more.grants, g); i >= 0 {
		p.more.grants = slices.Delete(p.more.grants, i, i+1)
	}
}
