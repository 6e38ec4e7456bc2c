package store

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

func grantLimits() *Limits {
	l := free()
	l.MaxGrants, l.MaxGrantDepth = 4, 2
	return l
}

func perConsumer(sp *Spec) { sp.Restrict = proto.RestrictOwn }

// recEnforcer records what it is asked to enforce, and checks that the
// store's lock is free then (Enforce walks the kernel's fd table: it must
// not hold up the store).
type recEnforcer struct {
	t   *testing.T
	s   *Store
	ids []string
}

func (r *recEnforcer) Enforce(e *Entry) {
	if !r.s.mu.TryLock() {
		r.t.Errorf("Enforce(%s) called under the store's lock", e.ID())
	} else {
		r.s.mu.Unlock()
	}
	if !linux.FDOpen(e.FD()) {
		r.t.Errorf("Enforce(%s): its fd is closed already", e.ID())
	}
	r.ids = append(r.ids, e.Name())
}

func TestGrantPerConsumer(t *testing.T) {
	f := newFixture(t)
	e := newEntry(t, "o", "m", perConsumer)
	if err := f.s.Publish(e, 0, false, nil, free()); err != nil {
		t.Fatal(err)
	}
	l := grantLimits()
	a, made, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"a.service", 0}}, l)
	if err != nil || !made || a.Name() != "m#g2" || a.GrantID() != "g2" || a.Depth() != 1 || a.Root() != e || a.Parent() != e {
		t.Fatalf("grant a: %v %v %v", a, made, err)
	}
	if same, _ := linux.DupfdQuery(a.FD(), e.FD()); same {
		t.Fatal("a grant shares the entry's description")
	}
	// The same consumer gets the same grant; another uid another one.
	a2, made, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"a.service", 0}}, l)
	if err != nil || made || a2 != a {
		t.Fatalf("a again: %v %v %v", a2, made, err)
	}
	f.s.Release(a2)
	b, _, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"a.service", 1000}}, l)
	if err != nil || b == a {
		t.Fatalf("grant for another uid: %v %v", b, err)
	}
	// Which tells them apart.
	for _, x := range []*Entry{e, a, b} {
		got, err := f.s.Which("o", "m", x.FD(), func(*Entry) error { return nil })
		if err != nil || got != x {
			t.Fatalf("Which(%s) = %v, %v", x.Name(), got, err)
		}
		f.s.Release(got)
	}
	other, _ := linux.MemfdCreate("other")
	defer linux.Close(other)
	if _, err := f.s.Which("o", "m", other, func(*Entry) error { return nil }); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("Which(unrelated) = %v", err)
	}
	deny := errors.New("no")
	if _, err := f.s.Which("o", "m", a.FD(), func(*Entry) error { return deny }); err != deny {
		t.Fatalf("Which without leave = %v", err)
	}
	// Delegation, bounded in depth.
	if _, _, err := f.s.Grant(a, GrantOptions{Grantee: Grantee{"c.service", AnyUID}, Delegated: true, Restrict: proto.RestrictReadOnly}, l); !errors.Is(err, ErrNotDerivable) {
		t.Fatalf("read-only grant of an unsealed memfd: %v", err)
	}
	c, _, err := f.s.Grant(a, GrantOptions{Grantee: Grantee{"c.service", AnyUID}, Delegated: true, Charge: Charge{Cgroup: "/c.service", Acct: 7, Limited: true}}, l)
	if err != nil || c.Name() != "m#g2#g4" || c.Parent() != a || c.Cgroup() != "/c.service" || c.Acct() != 7 || c.Pinned() {
		t.Fatalf("delegate: %v %v", c, err)
	}
	// Sealed, a read-only one can be made.
	if err := linux.AddSeals(e.FD(), 0x0010|0x0004|0x0002); err != nil { // F_SEAL_FUTURE_WRITE, GROW, SHRINK: not yet SEAL
		t.Fatal(err)
	}
	if _, _, err := f.s.Grant(a, GrantOptions{Grantee: Grantee{"r.service", AnyUID}, Delegated: true, Restrict: proto.RestrictReadOnly}, l); !errors.Is(err, ErrNotDerivable) {
		t.Fatalf("read-only grant of a memfd whose seals are not sealed: %v", err)
	}
	if err := linux.AddSeals(e.FD(), 0x0001); err != nil { // F_SEAL_SEAL
		t.Fatal(err)
	}
	ro, _, err := f.s.Grant(a, GrantOptions{Grantee: Grantee{"r.service", AnyUID}, Delegated: true, Restrict: proto.RestrictReadOnly}, l)
	if err != nil || ro.Restrict()&proto.RestrictReadOnly == 0 {
		t.Fatalf("read-only delegate: %v %v", ro, err)
	}
	if mode, _, _ := linux.AccessMode(ro.FD()); mode != 0 {
		t.Fatalf("read-only grant has access mode %d", mode)
	}
	f.s.Release(ro)
	if ds := c.Delegators(); len(ds) != 1 || ds[0] != (Grantee{"a.service", 0}) {
		t.Fatalf("delegators %v", ds)
	}
	if d := f.s.Delegated("o", "m", Grantee{"c.service", 42}); d != c {
		t.Fatalf("Delegated = %v", d)
	} else {
		f.s.Release(d)
	}
	if _, _, err := f.s.Grant(c, GrantOptions{Grantee: Grantee{"d.service", AnyUID}, Delegated: true}, l); !errors.Is(err, ErrQuota) {
		t.Fatalf("past max_grant_depth: %v", err)
	}
	if _, _, err := f.s.Grant(a, GrantOptions{Grantee: Grantee{"x", 0}}, l); err == nil {
		t.Fatal("a grant of a grant that is no delegation")
	}
	// RevokeGrant takes the subtree, leaves the rest.
	for _, g := range []*Entry{a, b, c} {
		f.s.Release(g)
	}
	id, n, err := f.s.RevokeGrant("o", "m", "g2", func(*Entry) error { return nil })
	if err != nil || n != 3 || id != a.ID() {
		t.Fatalf("RevokeGrant = %q %d %v", id, n, err)
	}
	// Left: b's grant, and the marker that keeps a's consumer out.
	gs := f.s.Grants(e)
	if len(gs) != 2 || gs[0] != b || gs[1].Restrict()&proto.RestrictRevoked == 0 {
		t.Fatalf("grants left: %v", gs)
	}
	if id, uid := gs[1].Grantee(); id != "a.service" || uid != 0 || gs[1].Depth() != 1 {
		t.Fatalf("marker for %s %d", id, uid)
	}
	if _, _, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"a.service", 0}}, l); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a new grant for a revoked consumer: %v", err)
	}
	if _, _, err := f.s.RevokeGrant("o", "m", "g2", func(*Entry) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("again: %v", err)
	}
	if _, _, err := f.s.RevokeGrant("o", "m", gs[1].GrantID(), func(*Entry) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoking the marker: %v", err)
	}
	// Revoking the entry takes its grants.
	if _, err := f.s.Revoke("o", "m", func(*Entry) error { return nil }, false); err != nil {
		t.Fatal(err)
	}
	if f.s.Len() != 0 {
		t.Fatalf("%d entries left", f.s.Len())
	}
}

func TestGrantLimits(t *testing.T) {
	f := newFixture(t)
	e := newEntry(t, "o", "m", perConsumer)
	f.s.Publish(e, 0, false, nil, free())
	l := grantLimits()
	for i := range l.MaxGrants {
		g, _, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{fmt.Sprintf("c%d", i), 0}}, l)
		if err != nil {
			t.Fatal(err)
		}
		f.s.Release(g)
	}
	if _, _, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"one-more", 0}}, l); !errors.Is(err, ErrQuota) {
		t.Fatalf("past max_grants: %v", err)
	}
	// Grants count as entries of the owner.
	l = free()
	l.MaxGrants, l.MaxGrantDepth, l.Max = 100, 3, f.s.Len()
	if _, _, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"over", 0}}, l); !errors.Is(err, ErrQuota) {
		t.Fatalf("past max_entries: %v", err)
	}
	// Kinds without a description of their own are refused.
	sock := newEntry(t, "o", "s", kind("socket"))
	f.s.Publish(sock, 0, false, nil, free())
	if _, _, err := f.s.Grant(sock, GrantOptions{Grantee: Grantee{"a", 0}}, grantLimits()); !errors.Is(err, ErrNotDerivable) {
		t.Fatalf("grant of a socket: %v", err)
	}
}

// An expiring entry ends its grants; enforcement runs after the lock for
// each, and the ledger remembers them.
func TestGrantExpiryAndEnforcement(t *testing.T) {
	f := newFixture(t)
	enf := &recEnforcer{t: t, s: f.s}
	f.s.SetEnforcer(enf)
	e := newEntry(t, "o", "m", perConsumer, expires(t0.Add(time.Minute)))
	f.s.Publish(e, 0, false, nil, free())
	g, _, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"a", 0}}, grantLimits())
	if err != nil || !g.Expires().Equal(e.Expires()) {
		t.Fatalf("grant %v, %v", g, err)
	}
	// A delegation's own TTL is shorter; never longer than its parent's.
	c, _, err := f.s.Grant(g, GrantOptions{Grantee: Grantee{"c", AnyUID}, Delegated: true, Expires: t0.Add(time.Hour)}, grantLimits())
	if err != nil || !c.Expires().Equal(e.Expires()) {
		t.Fatalf("delegated %v, %v", c, err)
	}
	f.s.Release(g)
	f.s.Release(c)
	f.clk.Advance(2 * time.Minute)
	if f.s.Len() != 0 || len(enf.ids) != 3 {
		t.Fatalf("after expiry: %d entries, enforced %v", f.s.Len(), enf.ids)
	}
	if l := f.s.Ledger(); len(l) != 3 || l[0].Key.Name != "m" {
		t.Fatalf("ledger %+v", l)
	}
	// A replace enforces the old entry's grants, not the entry itself.
	enf.ids = nil
	e2 := newEntry(t, "o", "r", perConsumer)
	f.s.Publish(e2, 0, false, nil, free())
	g2, _, _ := f.s.Grant(e2, GrantOptions{Grantee: Grantee{"a", 0}}, grantLimits())
	f.s.Release(g2)
	e3 := newEntry(t, "o", "r", perConsumer)
	if err := f.s.Publish(e3, 0, true, func(*Entry) error { return nil }, free()); err != nil {
		t.Fatal(err)
	}
	if len(enf.ids) != 1 || enf.ids[0] != g2.Name() {
		t.Fatalf("replace enforced %v", enf.ids)
	}
	// Close enforces nothing.
	enf.ids = nil
	closeStore(t, f.s)
	if len(enf.ids) != 0 {
		t.Fatalf("close enforced %v", enf.ids)
	}
}

// Restore links grants to their restored parents; a grant whose parent is
// not restored is revoked.
func TestGrantRestore(t *testing.T) {
	f := newFixture(t)
	e := newEntry(t, "o", "m", perConsumer)
	if err := f.s.Restore(e, EntryID(3, "o", "m")); err != nil {
		t.Fatal(err)
	}
	g := newEntry(t, "o", "m#g5", func(sp *Spec) { sp.Grantee, sp.Restrict = "a", proto.RestrictOwn })
	if err := f.s.Restore(g, EntryID(5, "o", "m#g5")); err != nil {
		t.Fatal(err)
	}
	if g.Parent() != e || len(f.s.Grants(e)) != 1 {
		t.Fatalf("restored grant not linked: parent %v", g.Parent())
	}
	orphan := newEntry(t, "o", "gone#g7", func(sp *Spec) { sp.Grantee = "a" })
	if err := f.s.Restore(orphan, EntryID(7, "o", "gone#g7")); err == nil {
		t.Fatal("an orphan grant was restored")
	}
}

// BenchmarkGrantMake: what a consumer's first acquire of a per-consumer
// entry costs the store (a reopen through /proc/self/fd and the grant's
// insertion), beside an acquire and release of the entry itself,
// alternating in chunks of one run (each chunk's entry, with its grants,
// is revoked after it, untimed).
func BenchmarkGrantMake(b *testing.B) {
	s := New(nil, nil)
	defer closeStore(b, s)
	l := free()
	l.MaxGrants, l.MaxGrantDepth = 1<<20, 3
	const chunk = 100
	var acq, grant time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		b.StopTimer()
		fd, _ := linux.MemfdCreate("bench")
		e := entryFor("o", "m", fd, perConsumer)
		if err := s.Publish(e, 0, false, nil, free()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		n := min(chunk, b.N-done)
		t0 := time.Now()
		for i := 0; i < n; i++ {
			x := s.Acquire("o", "m")
			s.Release(x)
		}
		t1 := time.Now()
		for i := 0; i < n; i++ {
			g, _, err := s.Grant(e, GrantOptions{Grantee: Grantee{"c", uint32(i)}}, l)
			if err != nil {
				b.Fatal(err)
			}
			s.Release(g)
		}
		t2 := time.Now()
		acq += t1.Sub(t0)
		grant += t2.Sub(t1)
		b.StopTimer()
		if _, err := s.Revoke("o", "m", func(*Entry) error { return nil }, false); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(acq.Nanoseconds())/float64(b.N), "acquire-ns/op")
	b.ReportMetric(float64(grant.Nanoseconds())/float64(b.N), "grant-make-ns/op")
}

// A directory's grant is a detached mount of it (in the test's own mount
// namespace here): read-only as asked, and ".." stays at its root.
func TestGrantDirectory(t *testing.T) {
	f := newFixture(t)
	top := t.TempDir()
	inner := top + "/inner"
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(inner, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	e := entryFor("o", "d", fd, kind("dir"), func(sp *Spec) { sp.Restrict = proto.RestrictOwn | proto.RestrictReadOnly | proto.RestrictNoExec })
	if err := f.s.Publish(e, 0, false, nil, free()); err != nil {
		t.Fatal(err)
	}
	g, _, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"a", 0}, Restrict: proto.RestrictNoSuid}, grantLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer f.s.Release(g)
	up, err := unix.Openat(g.FD(), "..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(up)
	var a, b unix.Stat_t
	unix.Fstat(up, &a)
	unix.Fstat(g.FD(), &b)
	if a.Ino != b.Ino {
		t.Fatal(`".." left the grant's tree`)
	}
	if w, err := unix.Openat(g.FD(), "x", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644); !errors.Is(err, unix.EROFS) {
		unix.Close(w)
		t.Fatalf("create in a read-only grant: %v", err)
	}
	if r := g.Restrict(); r&(proto.RestrictReadOnly|proto.RestrictNoExec|proto.RestrictNoSuid) != proto.RestrictReadOnly|proto.RestrictNoExec|proto.RestrictNoSuid {
		t.Fatalf("grant restrictions %v", r)
	}
	// A cloner that fails refuses the grant, and says why.
	f.s.SetTreeCloner(func(int, uint64, bool) (int, error) { return -1, unix.EINVAL })
	if _, _, err := f.s.Grant(e, GrantOptions{Grantee: Grantee{"b", 0}}, grantLimits()); !errors.Is(err, ErrNotDerivable) {
		t.Fatalf("grant with a failing cloner: %v", err)
	}
}

// An entry that expired, or whose owner went, while the agent was down is
// revoked at restore: enforced (after the lock) and in the ledger, as a
// grant whose parent did not come back is.
func TestRestoreEnforcesWhatIsDue(t *testing.T) {
	f := newFixture(t)
	enf := &recEnforcer{t: t, s: f.s}
	f.s.SetEnforcer(enf)
	gone := newEntry(t, "o", "gone", expires(t0.Add(-time.Minute)))
	if err := f.s.Restore(gone, EntryID(3, "o", "gone")); err == nil {
		t.Fatal("an expired entry was restored")
	}
	f.w.Populate(svc, false)
	dead := newEntry(t, "x.service", "dead", inCgroup(svc, svc))
	if err := f.s.Restore(dead, EntryID(4, "x.service", "dead")); err == nil {
		t.Fatal("an entry of an empty owner cgroup was restored")
	}
	orphan := newEntry(t, "o", "lost#g9", func(sp *Spec) { sp.Grantee = "a" })
	if err := f.s.Restore(orphan, EntryID(9, "o", "lost#g9")); err == nil {
		t.Fatal("an orphan grant was restored")
	}
	dup := newEntry(t, "o", "dup")
	f.s.Restore(dup, EntryID(5, "o", "dup"))
	again := newEntry(t, "o", "dup")
	if err := f.s.Restore(again, EntryID(6, "o", "dup")); err == nil {
		t.Fatal("a duplicate was restored")
	}
	if len(enf.ids) != 3 || enf.ids[0] != "gone" || enf.ids[1] != "dead" || enf.ids[2] != "lost#g9" {
		t.Fatalf("enforced %v, want the expired, the dead owner's and the orphan grant (not the duplicate)", enf.ids)
	}
	if l := f.s.Ledger(); len(l) != 3 || l[0].Seq != 3 || l[2].Seq != 9 {
		t.Fatalf("ledger %+v", l)
	}
}
