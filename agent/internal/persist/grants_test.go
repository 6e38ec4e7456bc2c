package persist

import (
	"iter"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

type nopEnforcer struct{ n int }

func (e *nopEnforcer) Enforce(*store.Entry) { e.n++ }

// A hand-off carries grants (linked to their parents again, delegations
// below them) and the ledger of enforced revocations.
func TestHandoffGrantsAndLedger(t *testing.T) {
	cg := cgroups{"/svc": 10}
	from := newFixture(t, cg)
	enf := &nopEnforcer{}
	from.st.SetEnforcer(enf)
	limits := &store.Limits{Max: 100, PerUID: 100, PinnedPerUID: 100, Node: noLimits, MaxGrants: 8, MaxGrantDepth: 3}
	fd, _ := linux.MemfdCreate("e")
	sp := store.Spec{Owner: "x.service", Name: "m", Pinned: true, Kind: "memfd", Cgroup: "/svc", OwnerCgroup: "/svc", Restrict: proto.RestrictOwn, Published: time.Now()}
	sp.Dev, sp.Ino, _ = linux.FileID(fd)
	e := store.NewEntry(&sp, fd)
	if err := from.st.Publish(e, 0, false, nil, limits); err != nil {
		t.Fatal(err)
	}
	a, _, err := from.st.Grant(e, store.GrantOptions{Grantee: store.Grantee{Identity: "a.service", UID: 7}}, limits)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := from.st.Grant(a, store.GrantOptions{Grantee: store.Grantee{Identity: "c.service", UID: store.AnyUID}, Delegated: true}, limits)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := from.st.Grant(e, store.GrantOptions{Grantee: store.Grantee{Identity: "b.service", UID: 8}}, limits)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []*store.Entry{a, b, c} {
		from.st.Release(g)
	}
	if _, _, err := from.st.RevokeGrant("x.service", "m", b.GrantID(), func(*store.Entry) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if enf.n != 1 || len(from.st.Ledger()) != 1 {
		t.Fatalf("enforced %d, ledger %v", enf.n, from.st.Ledger())
	}
	names, fds, err := Handoff(from.st, from.reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var passed []Stored
	for i, fd := range fds {
		d, _ := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		passed = append(passed, Stored{names[i], d})
	}
	from.close()
	for _, fd := range fds {
		linux.Close(fd)
	}
	to := newFixture(t, cg)
	// The entry, a's grant, c's delegated from it, and the marker of b's.
	if n := Restore(to.log, passed, to.st, to.reg, nil); n != 4 {
		t.Fatalf("restored %d entries and grants, want 4", n)
	}
	var re *store.Entry
	to.st.ReadLocked(func(_ uint64, entries iter.Seq[*store.Entry], ledger []store.Revoked) {
		for x := range entries {
			if x.Name() == "m" {
				re = x
			}
		}
		if len(ledger) != 1 || ledger[0].Key.Name != b.Name() || ledger[0].Seq != b.Number() {
			t.Errorf("ledger after the hand-off: %+v", ledger)
		}
	})
	gs := to.st.Grants(re)
	if len(gs) != 3 || gs[0].GrantID() != a.GrantID() || gs[1].Parent() != gs[0] || gs[2].Restrict()&proto.RestrictRevoked == 0 {
		t.Fatalf("grants after the hand-off: %v", gs)
	}
	if _, _, err := to.st.Grant(re, store.GrantOptions{Grantee: store.Grantee{Identity: "b.service", UID: 8}}, limits); err == nil {
		t.Fatal("b.service got a grant again after a hand-off")
	}
	if id, uid := gs[1].Grantee(); id != "c.service" || uid != store.AnyUID || gs[1].Depth() != 2 {
		t.Fatalf("delegated grant: %s %d", id, uid)
	}
	// The restored grant is still the consumer's description.
	x, err := to.st.Which("x.service", "m", gs[0].FD(), func(*store.Entry) error { return nil })
	if err != nil || x != gs[0] {
		t.Fatalf("Which: %v %v", x, err)
	}
	to.st.Release(x)
}

func TestValidGrantRecord(t *testing.T) {
	base := Record{ID: "e-5", Owner: "x.service", Kind: "memfd", Cgroup: "/svc", OwnerCg: "/svc"}
	for _, tc := range []struct {
		name, grantee string
		ok            bool
	}{
		{"m", "", true},
		{"m#g5", "a.service", true},
		{"m#g5#g9", "c.service", true},
		{"m#g5", "", false},
		{"m", "a.service", false},
		{"m#x5", "a.service", false},
		{"m#g05", "a.service", false},
		{"m#", "a.service", false},
		{"#g5", "a.service", false},
		{"m:x#g5", "a.service", false},
	} {
		r := base
		r.Name, r.Grantee = tc.name, tc.grantee
		if err := ValidRecord(&r); (err == nil) != tc.ok {
			t.Errorf("%q grantee %q: %v, want ok=%v", tc.name, tc.grantee, err, tc.ok)
		}
	}
}
