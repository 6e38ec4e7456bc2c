package store

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/refusal"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/testutil"
)

// Every test closes its store (newFixture registers it), so the fds the
// store released are closed by the closer before the leak check.
func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

const svc = "/system.slice/x.service" // an owner cgroup the watcher follows

type fixture struct {
	s   *Store
	w   *fakeWatcher
	clk *fakeClock
	obs *recObserver
}

// newFixture returns a store with a fake watcher, clock and observer.
// Cleanup closes the store, then checks that the watcher's references are
// balanced.
func newFixture(t *testing.T) *fixture {
	f := &fixture{w: newFakeWatcher(), clk: newFakeClock(t0), obs: newObserver()}
	t.Cleanup(func() { f.w.checkBalanced(t) })
	f.s = newStore(t, f.w, f.clk)
	f.s.SetObserver(f.obs)
	return f
}

// newStore returns a store closed at the end of the test.
func newStore(t *testing.T, w Watcher, c Clock) *Store {
	s := New(w, c)
	t.Cleanup(func() { closeStore(t, s) })
	return s
}

func closeStore(t testing.TB, s *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if stuck, err := s.Close(ctx); err != nil {
		t.Errorf("Close: %v (stuck %v)", err, stuck)
	}
}

// drain waits until the closer has closed every fd released so far.
func drain(t testing.TB, s *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if stuck, err := s.closer.Stop(ctx); err != nil {
		t.Fatalf("closer: %v (stuck %v)", err, stuck)
	}
}

// newEntry returns an unpublished entry owning a fresh memfd, in the root
// cgroup, unlimited, with what each of set changes.
func newEntry(t testing.TB, owner, name string, set ...func(*Spec)) *Entry {
	t.Helper()
	fd, err := linux.MemfdCreate("store-test")
	if err != nil {
		t.Fatal(err)
	}
	return entryFor(owner, name, fd, set...)
}

func entryFor(owner, name string, fd int, set ...func(*Spec)) *Entry {
	sp := Spec{Owner: owner, Name: name, Kind: "memfd", Cgroup: "/", OwnerCgroup: "/", Published: t0}
	sp.Dev, sp.Ino, _ = linux.FileID(fd)
	for _, f := range set {
		f(&sp)
	}
	return NewEntry(&sp, fd)
}

// owned returns an unpinned entry of owner cgroup p.
func owned(t testing.TB, name, p string) *Entry {
	return newEntry(t, "x.service", name, inCgroup(p, p))
}

// inCgroup sets an entry's cgroup and owner cgroup.
func inCgroup(cg, owner string) func(*Spec) {
	return func(sp *Spec) { sp.Cgroup, sp.OwnerCgroup = cg, owner }
}

// expires sets an entry's deadline.
func expires(at time.Time) func(*Spec) { return func(sp *Spec) { sp.Expires = at } }

// kind sets an entry's kind.
func kind(k string) func(*Spec) { return func(sp *Spec) { sp.Kind = k } }

// uid sets an entry's publisher's uid.
func uid(u uint32) func(*Spec) { return func(sp *Spec) { sp.UID = u } }

// pinned pins an entry.
func pinned(sp *Spec) { sp.Pinned = true }

// fdRef names an entry's open file by number and inode, so that a number
// reused after close does not pass for it.
type fdRef struct {
	n        int
	dev, ino uint64
}

func refOf(e *Entry) fdRef {
	dev, ino := e.File()
	return fdRef{e.FD(), dev, ino}
}

func (r fdRef) open() bool {
	var st unix.Stat_t
	return unix.Fstat(r.n, &st) == nil && st.Dev == r.dev && st.Ino == r.ino
}

func noNode(string, bool) policy.Limits {
	return policy.Limits{MaxEntries: policy.Unlimited, MaxPinned: policy.Unlimited}
}

func free() *Limits {
	return &Limits{Max: 1 << 20, PerUID: 1 << 20, PinnedPerUID: 1 << 20, Node: noNode}
}

func mustPublish(t testing.TB, s *Store, e *Entry) {
	t.Helper()
	if err := s.Publish(e, 0, false, nil, free()); err != nil {
		t.Fatalf("publish %s:%s: %v", e.Owner(), e.Name(), err)
	}
}

// wantKind fails t unless err is an *Error of kind.
func wantKind(t testing.TB, err, kind error, msgHas string) {
	t.Helper()
	var se *refusal.Error
	if !errors.Is(err, kind) || !errors.As(err, &se) || se.Kind != kind || se.Error() != se.Msg || !strings.Contains(se.Msg, msgHas) {
		t.Fatalf("error %v (%T), want a *refusal.Error of kind %q saying %q", err, err, kind, msgHas)
	}
}

func names(es []*Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Owner()+":"+e.Name())
	}
	return out
}

func noReplace(t testing.TB) func(*Entry) error {
	return func(old *Entry) error {
		t.Errorf("mayReplace called for %s:%s without an entry to replace", old.Owner(), old.Name())
		return nil
	}
}

func TestPublishAcquireRelease(t *testing.T) {
	f := newFixture(t)
	if e := f.s.Acquire("x.service", "db"); e != nil {
		t.Fatalf("Acquire of nothing = %v", e)
	}
	e := newEntry(t, "container:web", "db sock/1")
	fd := refOf(e)
	if err := f.s.Publish(e, 0, true, noReplace(t), free()); err != nil {
		t.Fatal(err)
	}
	if e.ID() != "e-1.container_web.db_sock_1" {
		t.Fatalf("id %q", e.ID())
	}
	got := f.s.Acquire("container:web", "db sock/1")
	if got != e || got.FD() != fd.n || f.s.Len() != 1 {
		t.Fatalf("Acquire = %v (fd %d), want the published entry (fd %d); Len %d", got, got.FD(), fd.n, f.s.Len())
	}
	got.CountAcquire()
	if got.Acquired() != 1 {
		t.Fatalf("Acquired = %d", got.Acquired())
	}
	f.s.Release(got)
	if !fd.open() {
		t.Fatal("Release of an acquired reference closed the published entry's fd")
	}
	if tg := e.Target(); tg.Owner != "container:web" || tg.Name != "db sock/1" || tg.Kind != "memfd" {
		t.Fatalf("Target = %+v", tg)
	}
	closeStore(t, f.s)
	if fd.open() {
		t.Fatal("Close left the entry's fd open")
	}
	if f.s.Len() != 0 || f.s.Acquire("container:web", "db sock/1") != nil {
		t.Fatal("entries left after Close")
	}
	wantKind(t, f.s.Publish(newEntry(t, "x.service", "late"), 0, false, nil, free()), ErrClosed, "shutting down")
}

func TestPublishDuplicate(t *testing.T) {
	f := newFixture(t)
	first := newEntry(t, "x.service", "a")
	mustPublish(t, f.s, first)
	dup := newEntry(t, "x.service", "a")
	fd := refOf(dup)
	wantKind(t, f.s.Publish(dup, 0, false, noReplace(t), free()), ErrExists, "x.service:a is already published")
	drain(t, f.s)
	if fd.open() {
		t.Fatal("the refused entry's fd is still open")
	}
	if f.s.Acquire("x.service", "a") != first || f.s.Len() != 1 {
		t.Fatal("a refused duplicate changed the store")
	}
	f.s.Release(first)
	if ev, _ := f.obs.take(); !slices.Equal(ev, []string{"+x.service:a"}) {
		t.Fatalf("observer saw %v", ev)
	}
}

func TestPublishReplace(t *testing.T) {
	refuse := errors.New("not yours")
	for _, tc := range []struct {
		name string
		may  error
	}{{"allowed", nil}, {"refused", refuse}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			old := newEntry(t, "x.service", "a", uid(1000))
			mustPublish(t, f.s, old)
			oldFD := refOf(old)
			e := newEntry(t, "x.service", "a")
			newFD := refOf(e)
			var asked *Entry
			err := f.s.Publish(e, 0, true, func(o *Entry) error { asked = o; return tc.may }, free())
			if asked != old {
				t.Fatalf("mayReplace was asked about %v, want the published entry", asked)
			}
			if !errors.Is(err, tc.may) || (tc.may == nil) != (err == nil) {
				t.Fatalf("Publish = %v, want %v", err, tc.may)
			}
			want, gone, kept := e, oldFD, newFD
			events := []string{"+x.service:a", "-x.service:a", "+x.service:a"}
			if tc.may != nil {
				want, gone, kept = old, newFD, oldFD
				events = events[:1]
			}
			drain(t, f.s)
			if gone.open() || !kept.open() {
				t.Fatalf("fd of the entry that went open: %v; of the one kept: %v", gone.open(), kept.open())
			}
			if got := f.s.Acquire("x.service", "a"); got != want {
				t.Fatalf("Acquire = %v, want %v", got, want)
			} else {
				f.s.Release(got)
			}
			if ev, _ := f.obs.take(); !slices.Equal(ev, events) {
				t.Fatalf("observer saw %v, want %v", ev, events)
			}
			if tc.may == nil && e.ID() != "e-2.x.service.a" {
				t.Fatalf("replacement's id %s", e.ID())
			}
		})
	}
}

func TestRevoke(t *testing.T) {
	f := newFixture(t)
	e := newEntry(t, "x.service", "a", uid(1000))
	mustPublish(t, f.s, e)
	allow := func(*Entry) error { return nil }

	_, err := f.s.Revoke("x.service", "missing", allow, false)
	wantKind(t, err, ErrNotFound, "x.service:missing is not published")

	refuse := errors.New("uid 1001 may not revoke it")
	var asked *Entry
	if _, err := f.s.Revoke("x.service", "a", func(o *Entry) error { asked = o; return refuse }, false); err != refuse || asked != e {
		t.Fatalf("Revoke refused by may = %v (asked %v)", err, asked)
	}
	_, err = f.s.Revoke("x.service", "a", allow, true)
	wantKind(t, err, ErrNotSocket, "is a memfd, not a socket")
	if f.s.Len() != 1 {
		t.Fatal("a refused revoke removed the entry")
	}

	fd := refOf(e)
	id, err := f.s.Revoke("x.service", "a", allow, false)
	if err != nil || id != e.ID() || id == "" {
		t.Fatalf("Revoke = %q, %v; want %q", id, err, e.ID())
	}
	if f.s.Len() != 0 || f.s.Acquire("x.service", "a") != nil {
		t.Fatal("revoked entry still published")
	}
	drain(t, f.s)
	if fd.open() {
		t.Fatal("revoked entry's fd still open")
	}
	live, tombs := f.s.Hold()
	f.s.ReleaseAll(live)
	if _, ino := e.File(); len(tombs) != 1 || tombs[0].Key != e.Key() || tombs[0].Ino != ino || tombs[0].Kind != "memfd" || !tombs[0].Removed.Equal(t0) {
		t.Fatalf("tombstones %+v", tombs)
	}
	ev, dropped := f.obs.take()
	if !slices.Equal(ev, []string{"+x.service:a", "-x.service:a"}) || dropped != 0 {
		t.Fatalf("observer saw %v, %d drops; a revoke is no drop", ev, dropped)
	}
}

// Shutdown reaches every holder of a socket: the peer reads EOF.
func TestRevokeShutdown(t *testing.T) {
	f := newFixture(t)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := sp[1]
	defer unix.Close(peer)
	if err := unix.SetNonblock(peer, true); err != nil {
		t.Fatal(err)
	}
	e := entryFor("x.service", "sock", sp[0], kind("socket"))
	mustPublish(t, f.s, e)
	held := f.s.Acquire("x.service", "sock") // another holder's copy stays open
	defer f.s.Release(held)
	buf := make([]byte, 1)
	if _, err := unix.Read(peer, buf); err != unix.EAGAIN {
		t.Fatalf("peer read before shutdown: %v, want EAGAIN", err)
	}
	if _, err := f.s.Revoke("x.service", "sock", func(*Entry) error { return nil }, true); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Read(peer, buf); n != 0 || err != nil {
		t.Fatalf("peer read after shutdown = %d, %v; want EOF", n, err)
	}

	// A shutdown that fails otherwise leaves the entry.
	lie := newEntry(t, "x.service", "lie", kind("socket")) // but a memfd: ENOTSOCK
	mustPublish(t, f.s, lie)
	if _, err := f.s.Revoke("x.service", "lie", func(*Entry) error { return nil }, true); !errors.Is(err, unix.ENOTSOCK) || f.s.Len() != 1 {
		t.Fatalf("failed shutdown: %v, %d entries", err, f.s.Len())
	}

	// An unconnected socket cannot be shut down (ENOTCONN): revoked anyway.
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	e = entryFor("x.service", "lonely", s, kind("socket"))
	mustPublish(t, f.s, e)
	if _, err := f.s.Revoke("x.service", "lonely", func(*Entry) error { return nil }, true); err != nil {
		t.Fatalf("revoke of an unconnected socket: %v", err)
	}
}

// An fd stays open while anyone holds a reference, revoked or not, and is
// closed after the last Release.
func TestReferenceCounting(t *testing.T) {
	f := newFixture(t)
	e := newEntry(t, "x.service", "a")
	fd := refOf(e)
	mustPublish(t, f.s, e)
	a1 := f.s.Acquire("x.service", "a")
	a2, ch, done := f.s.AcquireOrWait("x.service", "a")
	if a1 != e || a2 != e || ch != nil || done != nil {
		t.Fatal("Acquire/AcquireOrWait of a published entry")
	}
	live, _ := f.s.Hold()
	if _, err := f.s.Revoke("x.service", "a", func(*Entry) error { return nil }, false); err != nil {
		t.Fatal(err)
	}
	for i, rel := range []func(){func() { f.s.Release(a1) }, func() { f.s.ReleaseAll(live) }, func() { f.s.Release(a2) }} {
		drain(t, f.s)
		if !fd.open() || e.FD() != fd.n {
			t.Fatalf("fd closed with %d references left", 3-i)
		}
		rel()
	}
	closeStore(t, f.s)
	if fd.open() || e.FD() != -1 {
		t.Fatal("fd open after the last Release")
	}
}

// nodeLimits limits cgroups by path; ownerPinned bounds the pins of an
// owner cgroup (with the pins of the owner identity).
type nodeLimits struct {
	entries, pinned map[string]int
	ownerPinned     int
}

func (n nodeLimits) limits(p string, owner bool) policy.Limits {
	l := policy.Limits{MaxEntries: policy.Unlimited, MaxPinned: policy.Unlimited, EntriesSource: "max_entries of " + p, PinnedSource: "max_pinned of " + p}
	if v, ok := n.entries[p]; ok {
		l.MaxEntries = v
	}
	if v, ok := n.pinned[p]; ok {
		l.MaxPinned = v
	}
	if owner && n.ownerPinned > 0 {
		l.MaxPinned = n.ownerPinned
	}
	return l
}

// pub is one publish of a quota case.
type pub struct {
	name, owner, cgroup, ownerCg string // owner "" is x.service; cgroup "" is /, ownerCg "" is cgroup
	pinned, limited, replace     bool
	acct                         uint32
	want                         string // "" accepted; else a word of the ErrQuota message
}

func TestQuotas(t *testing.T) {
	for _, tc := range []struct {
		name  string
		l     Limits
		node  nodeLimits
		steps []pub
		nodes []Node // Nodes("") at the end, if set
	}{
		{"max", Limits{Max: 2}, nodeLimits{}, []pub{
			{name: "a"}, {name: "b", limited: true}, {name: "c", want: "(the whole agent) holds 2 entries"},
			{name: "a", replace: true}, // a replace adds nothing
		}, nil},
		{"reserve", Limits{Max: 3, Reserve: 1}, nodeLimits{}, []pub{
			{name: "a", limited: true}, {name: "b", limited: true},
			{name: "c", limited: true, want: "the last 1 of its 3 are kept for host administrators"},
			{name: "b", limited: true, replace: true},
			{name: "c"}, {name: "d", want: "holds 3 entries"},
		}, nil},
		{"per uid", Limits{Max: 10, PerUID: 2}, nodeLimits{}, []pub{
			{name: "a", limited: true, acct: 1000}, {name: "b", limited: true, acct: 1000},
			{name: "c", limited: true, acct: 1000, want: "uid 1000 holds 2 entries"},
			{name: "a", limited: true, acct: 1000, replace: true},
			{name: "c", limited: true, acct: 1001},
			{name: "d", acct: 1000}, // not limited: not counted
			{name: "e", limited: true, acct: 1000, want: "max_entries_per_uid is 2"},
		}, nil},
		{"pinned per uid", Limits{Max: 10, PerUID: 10, PinnedPerUID: 1}, nodeLimits{}, []pub{
			{name: "a", limited: true, pinned: true, acct: 7},
			{name: "b", limited: true, pinned: true, acct: 7, want: "uid 7 holds 1 pinned entries"},
			{name: "b", limited: true, acct: 7},
			{name: "a", limited: true, pinned: true, acct: 7, replace: true},
			{name: "c", pinned: true, acct: 7}, // not limited
			{name: "d", limited: true, pinned: true, acct: 8},
		}, nil},
		{"node of the entry's cgroup", Limits{Max: 10}, nodeLimits{entries: map[string]int{"/a": 1}}, []pub{
			{name: "a", cgroup: "/a"}, {name: "b", cgroup: "/a", want: "cgroup /a holds 1 entries, its limit (max_entries of /a is 1)"},
			{name: "b", cgroup: "/b"},
		}, nil},
		{"node of an ancestor", Limits{Max: 10}, nodeLimits{entries: map[string]int{"/a": 2}, pinned: map[string]int{"/": 1}}, []pub{
			{name: "a", cgroup: "/a/b"}, {name: "b", cgroup: "/a/c/d", ownerCg: "/a/c"},
			{name: "c", cgroup: "/a/b", want: "cgroup /a holds 2 entries"},
			{name: "c", cgroup: "/a", want: "cgroup /a holds 2 entries"},
			{name: "c", cgroup: "/x"},
			{name: "p", cgroup: "/x/y", pinned: true},
			{name: "q", cgroup: "/z", pinned: true, want: "cgroup / holds 1 pinned entries, its limit (max_pinned of / is 1)"},
		}, []Node{
			{Path: "/", Entries: 4, Pinned: 1}, {Path: "/a", Entries: 2}, {Path: "/a/b", Entries: 1, Owners: 1},
			{Path: "/a/c", Entries: 1, Owners: 1}, {Path: "/a/c/d", Entries: 1},
			{Path: "/x", Entries: 2, Pinned: 1, Owners: 1}, {Path: "/x/y", Entries: 1, Pinned: 1, Owners: 1},
		}},
		{"pins of an owner identity across cgroups", Limits{Max: 10}, nodeLimits{ownerPinned: 2}, []pub{
			{name: "a", owner: "container:x", cgroup: "/c1", pinned: true},
			{name: "b", owner: "container:x", cgroup: "/c1/sub", ownerCg: "/c1", pinned: true},
			// restarted under the same name, in a new cgroup: no fresh quota
			{name: "c", owner: "container:x", cgroup: "/c2", pinned: true, want: "cgroup /c2 holds 2 pinned entries"},
			{name: "c", owner: "container:x", cgroup: "/c2"},
			{name: "a", owner: "container:x", cgroup: "/c2", pinned: true, replace: true},
			{name: "a", owner: "container:y", cgroup: "/c2", pinned: true},
		}, nil},
		{"replace counts once", Limits{Max: 2, PerUID: 1, PinnedPerUID: 1}, nodeLimits{entries: map[string]int{"/a": 1}, pinned: map[string]int{"/a": 1}}, []pub{
			{name: "a", cgroup: "/a", pinned: true, limited: true, acct: 5},
			{name: "a", cgroup: "/a", pinned: true, limited: true, acct: 5, replace: true},
			{name: "a", cgroup: "/a/b", ownerCg: "/a", pinned: true, limited: true, acct: 5, replace: true},
		}, []Node{{Path: "/", Entries: 1, Pinned: 1}, {Path: "/a", Entries: 1, Pinned: 1, Owners: 1}, {Path: "/a/b", Entries: 1, Pinned: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, nil, newFakeClock(t0))
			l := tc.l
			if l.PerUID == 0 { // a zero would refuse every limited publish
				l.PerUID = 100
			}
			if l.PinnedPerUID == 0 {
				l.PinnedPerUID = 100
			}
			l.Node = tc.node.limits
			for i, p := range tc.steps {
				if p.owner == "" {
					p.owner = "x.service"
				}
				if p.cgroup == "" {
					p.cgroup = "/"
				}
				if p.ownerCg == "" {
					p.ownerCg = p.cgroup
				}
				e := newEntry(t, p.owner, p.name, func(sp *Spec) {
					sp.Cgroup, sp.OwnerCgroup, sp.Pinned, sp.Limited, sp.Acct = p.cgroup, p.ownerCg, p.pinned, p.limited, p.acct
				})
				err := s.Publish(e, 0, p.replace, func(*Entry) error { return nil }, &l)
				if p.want == "" && err != nil {
					t.Fatalf("step %d (%+v): %v", i, p, err)
				}
				if p.want != "" {
					wantKind(t, err, ErrQuota, p.want)
				}
				// Fds released by a refusal or replace count against their
				// uid until closed: let them close before the next step.
				drain(t, s)
			}
			if tc.nodes != nil {
				if got := s.Nodes(""); !slices.Equal(got, tc.nodes) {
					t.Fatalf("Nodes = %+v\nwant %+v", got, tc.nodes)
				}
			}
		})
	}
}

// The mirror bounds the store: with one more fd it would hold the
// entries', the removed ones it still keeps (Pending), and the new one.
func TestObserverRoom(t *testing.T) {
	for _, tc := range []struct {
		room, pending, fit int
	}{
		{-1, 5, 4}, // unknown: only Max (4) bounds
		{3, 0, 3},
		{3, 1, 2},
		{3, 3, 0},
		{0, 0, 0},
	} {
		t.Run(fmt.Sprintf("room %d pending %d", tc.room, tc.pending), func(t *testing.T) {
			f := newFixture(t)
			f.obs.set(tc.room, tc.pending)
			l := free()
			l.Max = 4
			n := 0
			for ; n < 10; n++ {
				if err := f.s.Publish(newEntry(t, "x.service", fmt.Sprint(n)), 0, false, nil, l); err != nil {
					want := "systemd's fd store would hold"
					if tc.room < 0 {
						want = "(the whole agent)"
					}
					wantKind(t, err, ErrQuota, want)
					break
				}
			}
			if n != tc.fit {
				t.Fatalf("%d entries fit, want %d", n, tc.fit)
			}
			if tc.room >= 0 && n > 0 {
				// A replace needs room for the new fd beside the old one.
				err := f.s.Publish(newEntry(t, "x.service", "0"), 0, true, func(*Entry) error { return nil }, l)
				wantKind(t, err, ErrQuota, fmt.Sprintf("would hold %d fds for entries, more than it keeps", n+tc.pending+1))
				f.obs.set(tc.room+1, tc.pending)
				if err := f.s.Publish(newEntry(t, "x.service", "0"), 0, true, func(*Entry) error { return nil }, l); err != nil {
					t.Fatalf("replace with room: %v", err)
				}
			}
		})
	}
}

// The observer sees every insert and removal in the store's order, and
// Dropped only after removals nobody asked for.
func TestObserverOrder(t *testing.T) {
	f := newFixture(t)
	f.w.Populate(svc, true)
	mustPublish(t, f.s, newEntry(t, "x.service", "a"))
	mustPublish(t, f.s, owned(t, "b", svc))
	if err := f.s.Publish(newEntry(t, "x.service", "a"), 0, true, func(*Entry) error { return nil }, free()); err != nil {
		t.Fatal(err)
	}
	f.s.Publish(newEntry(t, "x.service", "a"), 0, false, nil, free()) // refused: no event
	exp := newEntry(t, "x.service", "c", expires(t0.Add(time.Minute)))
	mustPublish(t, f.s, exp)
	if _, err := f.s.Revoke("x.service", "a", func(*Entry) error { return nil }, false); err != nil {
		t.Fatal(err)
	}
	ev, dropped := f.obs.take()
	want := []string{"+x.service:a", "+x.service:b", "-x.service:a", "+x.service:a", "+x.service:c", "-x.service:a"}
	if !slices.Equal(ev, want) || dropped != 0 {
		t.Fatalf("observer saw %v, %d drops; want %v, 0", ev, dropped, want)
	}
	f.clk.Advance(time.Minute)
	if ev, dropped = f.obs.take(); !slices.Equal(ev, []string{"-x.service:c"}) || dropped != 1 {
		t.Fatalf("after expiry: %v, %d drops", ev, dropped)
	}
	if n := f.s.OwnerEmptied(svc, 0); n != 0 {
		t.Fatalf("OwnerEmptied before any entry's epoch dropped %d", n)
	}
	if n := f.s.DropOwned("/nothing"); n != 0 {
		t.Fatalf("DropOwned of nothing dropped %d", n)
	}
	if _, dropped = f.obs.take(); dropped != 1 {
		t.Fatalf("Dropped called for drops that dropped nothing (%d)", dropped)
	}
	if n := f.s.OwnerEmptied(svc, f.w.Empty(svc)); n != 1 {
		t.Fatalf("OwnerEmptied dropped %d, want 1", n)
	}
	if ev, dropped = f.obs.take(); !slices.Equal(ev, []string{"-x.service:b"}) || dropped != 2 {
		t.Fatalf("after the owner emptied: %v, %d drops", ev, dropped)
	}
	closeStore(t, f.s)
	if ev, _ := f.obs.take(); len(ev) != 0 {
		t.Fatalf("Close told the observer %v (the mirror keeps the fds across a stop)", ev)
	}
}

func TestExpiry(t *testing.T) {
	f := newFixture(t)
	ttls := map[string]time.Duration{"a": 3 * time.Minute, "b": time.Minute, "c": 2 * time.Minute, "d": 0, "e": 2 * time.Minute}
	published := map[string]*Entry{}
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		e := newEntry(t, "x.service", name, func(sp *Spec) {
			sp.Published = t0.Add(-time.Hour)
			if ttls[name] > 0 {
				sp.Expires = t0.Add(ttls[name])
			}
		})
		mustPublish(t, f.s, e)
		published[name] = e
	}
	f.obs.take()
	for _, step := range []struct {
		by      time.Duration
		gone    []string
		left    int
		dropped int
	}{
		{30 * time.Second, nil, 5, 0},
		{31 * time.Second, []string{"b"}, 4, 1}, // t0+61s
		{58 * time.Second, nil, 4, 1},           // t0+119s
		{time.Second, []string{"c", "e"}, 2, 2}, // both due at t0+2m: one drop
		{10 * time.Hour, []string{"a"}, 1, 3},   // d never expires
		{100 * 24 * time.Hour, nil, 1, 3},
	} {
		f.clk.Advance(step.by)
		ev, dropped := f.obs.take()
		var want []string
		for _, n := range step.gone {
			want = append(want, "-x.service:"+n)
		}
		slices.Sort(ev)
		if !slices.Equal(ev, want) || f.s.Len() != step.left || dropped != step.dropped {
			t.Fatalf("at %v: removed %v, %d left, %d drops; want %v, %d, %d", f.clk.Now().Sub(t0), ev, f.s.Len(), dropped, want, step.left, step.dropped)
		}
	}
	if armed, _ := f.clk.armed(); armed {
		t.Fatal("timer armed with nothing left to expire")
	}
	live, tombs := f.s.Hold()
	f.s.ReleaseAll(live)
	for _, tb := range tombs {
		if want := t0.Add(ttls[tb.Name]); !tb.Removed.Equal(want) {
			t.Errorf("%s removed at %v, want at its deadline %v", tb.Name, tb.Removed, want)
		}
	}
	for name, e := range published {
		if !e.Published().Equal(t0.Add(-time.Hour)) || (ttls[name] == 0) != e.Expires().IsZero() || ttls[name] > 0 && !e.Expires().Equal(t0.Add(ttls[name])) {
			t.Errorf("%s: Published %v, Expires %v changed", name, e.Published(), e.Expires())
		}
	}
}

// Replacing an entry moves its deadline with it: a non-expiring
// replacement of an expiring entry never expires, and the other way round.
func TestExpiryReplace(t *testing.T) {
	f := newFixture(t)
	yes := func(*Entry) error { return nil }
	a := newEntry(t, "x.service", "a", expires(t0.Add(time.Minute)))
	mustPublish(t, f.s, a)
	b := newEntry(t, "x.service", "b", expires(t0.Add(2*time.Minute)))
	mustPublish(t, f.s, b)
	if armed, at := f.clk.armed(); !armed || !at.Equal(a.Expires()) {
		t.Fatalf("timer armed %v for %v, want for %v", armed, at, a.Expires())
	}
	a2 := newEntry(t, "x.service", "a") // never expires
	if err := f.s.Publish(a2, 0, true, yes, free()); err != nil {
		t.Fatal(err)
	}
	if a.heapIndex != -1 || a2.heapIndex != -1 {
		t.Fatal("replaced or non-expiring entry left in the expiry heap")
	}
	f.clk.Advance(90 * time.Second)
	if f.s.Acquire("x.service", "a") != a2 || f.s.Len() != 2 {
		t.Fatal("the replacement of an expiring entry expired with it")
	}
	f.s.Release(a2)
	f.clk.Advance(30 * time.Second)
	if f.s.Len() != 1 || f.s.Acquire("x.service", "b") != nil {
		t.Fatal("b did not expire at its deadline")
	}
	a3 := newEntry(t, "x.service", "a", expires(f.clk.Now().Add(time.Second)))
	if err := f.s.Publish(a3, 0, true, yes, free()); err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(time.Second)
	if f.s.Len() != 0 {
		t.Fatal("an expiring replacement of a non-expiring entry did not expire")
	}
	if !a.Expires().Equal(t0.Add(time.Minute)) || !a2.Expires().IsZero() {
		t.Fatal("Expires changed")
	}
}

// A revoked entry at the head of the expiry order leaves the others'
// deadlines as they were.
func TestExpiryAfterRevoke(t *testing.T) {
	f := newFixture(t)
	for i, name := range []string{"a", "b"} {
		e := newEntry(t, "x.service", name, expires(t0.Add(time.Duration(i+1)*time.Minute)))
		mustPublish(t, f.s, e)
	}
	f.s.Revoke("x.service", "a", func(*Entry) error { return nil }, false)
	f.clk.Advance(time.Minute)
	if f.s.Len() != 1 {
		t.Fatal("b expired early")
	}
	f.clk.Advance(time.Minute)
	if f.s.Len() != 0 {
		t.Fatal("b did not expire")
	}
}

func TestOwnerCgroup(t *testing.T) {
	f := newFixture(t)
	// An owner cgroup with no process: an unpinned entry would go at once.
	e := owned(t, "a", svc)
	fd := refOf(e)
	wantKind(t, f.s.Publish(e, 0, false, nil, free()), ErrOwnerEmpty, "owner cgroup "+svc+" has no processes left")
	if f.w.Refs(svc) != 0 {
		t.Fatal("refused publish kept its watch")
	}
	drain(t, f.s)
	if fd.open() {
		t.Fatal("refused entry's fd open")
	}

	f.w.Populate(svc, true)
	mustPublish(t, f.s, owned(t, "a", svc))
	pin := newEntry(t, "x.service", "pinned", inCgroup(svc, svc), pinned)
	mustPublish(t, f.s, pin)
	root := newEntry(t, "x.service", "root") // owner "/": never watched
	mustPublish(t, f.s, root)
	if f.w.Refs(svc) != 1 || f.w.Refs("/") != 0 {
		t.Fatalf("watch references %d on %s, %d on /; want one per unpinned entry", f.w.Refs(svc), svc, f.w.Refs("/"))
	}
	// Emptied, then populated again before the report arrives: what was
	// published after the emptying stays.
	ep := f.w.Bump(svc)
	mustPublish(t, f.s, owned(t, "b", svc))
	if n := f.s.OwnerEmptied(svc, ep); n != 1 {
		t.Fatalf("OwnerEmptied dropped %d, want 1 (a)", n)
	}
	if f.s.Acquire("x.service", "a") != nil {
		t.Fatal("a survived its owner's emptying")
	}
	if n := f.s.OwnerEmptied(svc, ep); n != 0 {
		t.Fatalf("a second report of the same emptying dropped %d", n)
	}
	if n := f.s.OwnerEmptied(svc, f.w.Empty(svc)); n != 1 || f.s.Len() != 2 {
		t.Fatalf("OwnerEmptied dropped %d (%d left), want b only", n, f.s.Len())
	}
	if f.w.Refs(svc) != 0 {
		t.Fatal("watch kept after its entries went")
	}

	// A cgroup removed and made again: the next publish finds out, and the
	// unpinned entries of the old one go.
	f.w.Populate(svc, true)
	mustPublish(t, f.s, owned(t, "c", svc))
	mustPublish(t, f.s, owned(t, "d", svc))
	f.w.Recreate(svc)
	f.obs.take()
	mustPublish(t, f.s, owned(t, "e", svc))
	ev, _ := f.obs.take()
	slices.Sort(ev[:2])
	if !slices.Equal(ev, []string{"-x.service:c", "-x.service:d", "+x.service:e"}) {
		t.Fatalf("publish into a recreated cgroup: observer saw %v", ev)
	}
	// A replace of an old cgroup's entry is a replace, not a drop.
	mustPublish(t, f.s, owned(t, "f", svc))
	f.w.Recreate(svc)
	if err := f.s.Publish(owned(t, "f", svc), 0, true, func(*Entry) error { return nil }, free()); err != nil {
		t.Fatal(err)
	}
	if f.s.Acquire("x.service", "e") != nil {
		t.Fatal("e of the old cgroup survived")
	}
	if got := names(f.s.Snapshot(func(*Entry) bool { return true })); !slices.Equal(got, []string{"x.service:f", "x.service:pinned", "x.service:root"}) {
		t.Fatalf("entries %v", got)
	}

	// DropOwned drops every unpinned entry of the cgroup, whatever its epoch.
	mustPublish(t, f.s, owned(t, "g", svc))
	other := owned(t, "other", "/system.slice/y.service")
	f.w.Populate(other.OwnerCgroup(), true)
	mustPublish(t, f.s, other)
	if n := f.s.DropOwned(svc); n != 2 {
		t.Fatalf("DropOwned dropped %d, want 2", n)
	}
	if got := names(f.s.Snapshot(func(*Entry) bool { return true })); !slices.Equal(got, []string{"x.service:other", "x.service:pinned", "x.service:root"}) {
		t.Fatalf("entries %v", got)
	}
	if f.w.Refs(svc) != 0 || f.w.Refs(other.OwnerCgroup()) != 1 {
		t.Fatal("watch references unbalanced")
	}
}

// A publisher in an owner cgroup the watcher already follows joins its
// watch without a read of the cgroup (Hold). What the watcher saw of the
// cgroup still decides: an emptying it saw, a cgroup made again at the
// path (another id) or an id not known send the publish to Add, which
// reads the cgroup as it is now and refuses an empty one, as before.
func TestOwnerWatchHeld(t *testing.T) {
	f := newFixture(t)
	f.w.Populate(svc, true)
	id := f.w.ID(svc)
	pub := func(name string, ownerID uint64) error {
		return f.s.Publish(owned(t, name, svc), ownerID, false, nil, free())
	}
	want := func(step string, adds, holds int, names ...string) {
		t.Helper()
		a, h, _ := f.w.Calls()
		var got []string
		for _, e := range f.s.Snapshot(func(*Entry) bool { return true }) {
			got = append(got, e.Name())
		}
		if a != adds || h != holds || !slices.Equal(got, names) || f.w.Refs(svc) != len(names) {
			t.Fatalf("%s: %d Adds, %d Holds, entries %v, %d references; want %d, %d, %v", step, a, h, got, f.w.Refs(svc), adds, holds, names)
		}
	}
	mustPublish := func(name string, ownerID uint64) {
		t.Helper()
		if err := pub(name, ownerID); err != nil {
			t.Fatalf("publish %s: %v", name, err)
		}
	}
	mustPublish("a", id) // the cgroup's first entry: read
	want("first", 1, 0, "a")
	mustPublish("b", id)
	want("watched", 1, 1, "a", "b")
	mustPublish("c", 0)
	mustPublish("d", id+100)
	want("unknown and other ids", 3, 1, "a", "b", "c", "d")

	// Seen empty, the store not told yet: read, still empty, refused.
	ep := f.w.Empty(svc)
	wantKind(t, pub("late", id), ErrOwnerEmpty, "no processes left")
	want("seen empty", 4, 1, "a", "b", "c", "d")
	if n := f.s.OwnerEmptied(svc, ep); n != 4 {
		t.Fatalf("the emptying dropped %d, want every entry that joined the watch", n)
	}
	want("emptied", 4, 1)

	// Populated again: read once, then held.
	f.w.Populate(svc, true)
	mustPublish("e", id)
	mustPublish("f", id)
	want("populated again", 5, 2, "e", "f")
	// An emptying and the processes that came back both seen before the
	// report: held at the new epoch, which the report does not drop.
	ep = f.w.Bump(svc)
	mustPublish("g", id)
	if n := f.s.OwnerEmptied(svc, ep); n != 2 {
		t.Fatalf("the emptying dropped %d, want e and f", n)
	}
	want("bumped", 5, 3, "g")

	// Removed and made again, the watcher not told yet: a connection of
	// the old cgroup still joins the old watch; the new cgroup's first
	// publish is read, finds the new cgroup, and the old entries go.
	newID := f.w.Recreate(svc)
	mustPublish("h", id)
	mustPublish("i", newID)
	want("recreated", 6, 4, "i")
	mustPublish("j", newID)
	mustPublish("k", id) // the old cgroup's id is no longer the watched one: read
	want("the new cgroup", 7, 5, "i", "j", "k")
}

func TestOwnerWatchError(t *testing.T) {
	f := newFixture(t)
	boom := errors.New("inotify: no space left")
	f.w.FailAdd(svc, boom)
	e := owned(t, "a", svc)
	fd := refOf(e)
	if err := f.s.Publish(e, 0, false, nil, free()); !errors.Is(err, boom) {
		t.Fatalf("Publish = %v, want the watcher's error", err)
	}
	if adds, holds, removes := f.w.Calls(); adds != 0 || holds != 0 || removes != 0 {
		t.Fatalf("%d Adds, %d Removes after a failed Add", adds, removes)
	}
	drain(t, f.s)
	if fd.open() || f.s.Len() != 0 {
		t.Fatal("failed publish left its entry")
	}
}

// A store without a watcher keeps unpinned entries for good.
func TestNoWatcher(t *testing.T) {
	s := newStore(t, nil, nil)
	mustPublish(t, s, owned(t, "a", svc))
	if s.OwnerEmptied(svc, 1<<60) != 0 || s.DropOwned(svc) != 0 || s.Len() != 1 {
		t.Fatal("entry without a watcher dropped")
	}
	s.Responsive()
}

func TestWaiters(t *testing.T) {
	f := newFixture(t)
	e, ch, done := f.s.AcquireOrWait("x.service", "a")
	e2, ch2, done2 := f.s.AcquireOrWait("x.service", "a")
	if e != nil || e2 != nil || ch == nil || ch != ch2 {
		t.Fatal("two waiters on one name should share one channel")
	}
	select {
	case <-ch:
		t.Fatal("channel closed before a publish")
	default:
	}
	mustPublish(t, f.s, newEntry(t, "x.service", "b")) // another name
	select {
	case <-ch:
		t.Fatal("channel closed by another name's publish")
	default:
	}
	mustPublish(t, f.s, newEntry(t, "x.service", "a"))
	<-ch // closed: does not block
	done()
	done2() // after the publish: harmless
	got, ch, _ := f.s.AcquireOrWait("x.service", "a")
	if got == nil || ch != nil {
		t.Fatal("AcquireOrWait of a published name should acquire it")
	}
	f.s.Release(got)

	// Waiters that give up leave nothing behind; the next wait is fresh.
	_, c1, d1 := f.s.AcquireOrWait("x.service", "later")
	_, _, d2 := f.s.AcquireOrWait("x.service", "later")
	d1()
	f.s.mu.RLock()
	n := len(f.s.waiters)
	f.s.mu.RUnlock()
	if n != 1 {
		t.Fatalf("%d waiters with one still waiting", n)
	}
	d2()
	f.s.mu.RLock()
	n = len(f.s.waiters)
	f.s.mu.RUnlock()
	_, c3, d3 := f.s.AcquireOrWait("x.service", "later")
	defer d3()
	if n != 0 || c3 == c1 {
		t.Fatalf("waiters leaked: %d left, channel reused %v", n, c3 == c1)
	}
	mustPublish(t, f.s, newEntry(t, "x.service", "later"))
	<-c3
	select {
	case <-c1:
		t.Fatal("an abandoned waiter's channel was closed")
	default:
	}
}

// Emptyings reported while publishers publish into the same owner cgroup,
// reading it (Add) or joining its watch (Hold): no entry published before
// the last reported emptying survives it.
func TestOwnerEmptiedRacesPublishes(t *testing.T) {
	f := newFixture(t)
	f.w.Populate(svc, true)
	const workers, each = 8, 40
	var published, dropped atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	tick := make(chan struct{}, 1) // a publish happened: report an emptying
	var last uint64
	emptier := make(chan struct{})
	go func() {
		defer close(emptier)
		for {
			select {
			case <-stop:
				return
			case <-tick:
			}
			ep := f.w.Bump(svc)
			dropped.Add(int64(f.s.OwnerEmptied(svc, ep)))
			last = ep
		}
	}()
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				fd, err := linux.MemfdCreate("race")
				if err != nil {
					t.Error(err)
					return
				}
				e := entryFor("x.service", fmt.Sprintf("w%d-%d", i, j), fd, inCgroup(svc+"/sub", svc))
				var id uint64 // half the workers join the watch by Hold
				if i%2 == 0 {
					id = f.w.ID(svc)
				}
				if err := f.s.Publish(e, id, false, nil, free()); err != nil {
					t.Error(err)
					return
				}
				published.Add(1)
				select {
				case tick <- struct{}{}:
				default:
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-emptier
	live := f.s.Snapshot(func(*Entry) bool { return true })
	if int64(len(live)) != published.Load()-dropped.Load() {
		t.Fatalf("%d entries left, %d published, %d dropped", len(live), published.Load(), dropped.Load())
	}
	for _, e := range live {
		if e.epoch < last {
			t.Errorf("%s published at epoch %d survived the emptying of epoch %d", e.Name(), e.epoch, last)
		}
	}
	if f.w.Refs(svc) != len(live) {
		t.Fatalf("%d watch references for %d entries", f.w.Refs(svc), len(live))
	}
	t.Logf("%d published, %d dropped, last epoch %d", published.Load(), dropped.Load(), last)
}

// Concurrent publishers never get past a limit: the check and the insert
// are one step.
func TestQuotasConcurrent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		l       Limits
		limit   int
		exact   bool // refusals' closes do not count against this limit
		prepare func(sp *Spec, i int)
	}{
		{"max", Limits{Max: 13, PerUID: 1000, PinnedPerUID: 1000, Node: noNode}, 13, true, func(*Spec, int) {}},
		{"reserve", Limits{Max: 20, Reserve: 9, PerUID: 1000, PinnedPerUID: 1000, Node: noNode}, 11, true, func(sp *Spec, _ int) { sp.Limited = true }},
		{"per uid", Limits{Max: 1000, PerUID: 7, PinnedPerUID: 1000, Node: noNode}, 7, false, func(sp *Spec, _ int) { sp.Limited, sp.Acct = true, 1000 }},
		{"pinned per uid", Limits{Max: 1000, PerUID: 1000, PinnedPerUID: 5, Node: noNode}, 5, true, func(sp *Spec, _ int) { sp.Limited, sp.Pinned, sp.Acct = true, true, 1000 }},
		{"node", Limits{Max: 1000, PerUID: 1000, PinnedPerUID: 1000, Node: nodeLimits{entries: map[string]int{"/a": 9}}.limits}, 9, true, func(sp *Spec, i int) {
			sp.Cgroup = fmt.Sprintf("/a/b%d", i%3)
			sp.OwnerCgroup = sp.Cgroup
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, nil, nil)
			var ok atomic.Int64
			var wg sync.WaitGroup
			for i := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := range 4 {
						fd, err := linux.MemfdCreate("quota")
						if err != nil {
							t.Error(err)
							return
						}
						e := entryFor("x.service", fmt.Sprintf("%d-%d", i, j), fd, func(sp *Spec) { tc.prepare(sp, i) })
						err = s.Publish(e, 0, false, nil, &tc.l)
						switch {
						case err == nil:
							ok.Add(1)
						case !errors.Is(err, ErrQuota):
							t.Errorf("Publish: %v", err)
						}
					}
				}()
			}
			wg.Wait()
			n := int(ok.Load())
			if n > tc.limit || s.Len() != n || tc.exact && n != tc.limit || n == 0 {
				t.Fatalf("%d publishes succeeded (%d entries), limit %d", n, s.Len(), tc.limit)
			}
		})
	}
}

func TestFreeze(t *testing.T) {
	f := newFixture(t)
	f.w.Populate(svc, true)
	a := newEntry(t, "x.service", "a", expires(t0.Add(time.Minute)))
	mustPublish(t, f.s, a)
	mustPublish(t, f.s, owned(t, "b", svc))
	fds := []fdRef{refOf(a), refOf(f.s.entries.get("x.service", "b"))}
	next, held := f.s.Freeze()
	if next != 3 || !slices.Equal(sortedNames(held), []string{"x.service:a", "x.service:b"}) {
		t.Fatalf("Freeze = %d, %v", next, names(held))
	}
	wantKind(t, f.s.Publish(newEntry(t, "x.service", "c"), 0, false, nil, free()), ErrClosed, "shutting down")
	f.clk.Advance(time.Hour)
	if f.s.Len() != 2 {
		t.Fatal("an entry expired after Freeze")
	}
	closeStore(t, f.s)
	for _, fd := range fds {
		if !fd.open() {
			t.Fatal("Close closed an fd Freeze handed out")
		}
	}
	f.s.ReleaseAll(held)
	drain(t, f.s)
	for _, fd := range fds {
		if fd.open() {
			t.Fatal("fd open after its last reference went")
		}
	}
}

func sortedNames(es []*Entry) []string {
	n := names(es)
	slices.Sort(n)
	return n
}

func TestHold(t *testing.T) {
	f := newFixture(t)
	for _, n := range []string{"a", "b"} {
		mustPublish(t, f.s, newEntry(t, "x.service", n))
	}
	f.s.Revoke("x.service", "a", func(*Entry) error { return nil }, false)
	live, tombs := f.s.Hold()
	if !slices.Equal(names(live), []string{"x.service:b"}) || len(tombs) != 1 || tombs[0].Name != "a" {
		t.Fatalf("Hold = %v, %+v", names(live), tombs)
	}
	fd := refOf(live[0])
	f.s.Revoke("x.service", "b", func(*Entry) error { return nil }, false)
	drain(t, f.s)
	if !fd.open() {
		t.Fatal("Hold's reference did not keep the fd open")
	}
	f.s.ReleaseAll(live)
	drain(t, f.s)
	if fd.open() {
		t.Fatal("fd open after ReleaseAll")
	}
	// Tombstones are bounded: the oldest go.
	for i := range maxTombs + 5 {
		mustPublish(t, f.s, newEntry(t, "x.service", "t"))
		f.s.Revoke("x.service", "t", func(*Entry) error { return nil }, false)
		if i%100 == 0 {
			drain(t, f.s)
		}
	}
	live, tombs = f.s.Hold()
	f.s.ReleaseAll(live)
	if len(tombs) != maxTombs || tombs[0].Name != "t" || tombs[len(tombs)-1].Name != "t" {
		t.Fatalf("%d tombstones, first %s", len(tombs), tombs[0].Name)
	}
}

func TestSnapshot(t *testing.T) {
	f := newFixture(t)
	for _, k := range []Key{{"b", "z"}, {"a", "y"}, {"c", "a"}, {"a", "b"}, {"b", "a"}} {
		mustPublish(t, f.s, newEntry(t, k.Owner, k.Name))
	}
	all := names(f.s.Snapshot(func(*Entry) bool { return true }))
	if want := []string{"a:b", "a:y", "b:a", "b:z", "c:a"}; !slices.Equal(all, want) {
		t.Fatalf("Snapshot = %v, want %v", all, want)
	}
	some := names(f.s.Snapshot(func(e *Entry) bool { return e.Owner() != "b" }))
	if want := []string{"a:b", "a:y", "c:a"}; !slices.Equal(some, want) {
		t.Fatalf("filtered Snapshot = %v, want %v", some, want)
	}
	if len(f.s.Snapshot(func(*Entry) bool { return false })) != 0 {
		t.Fatal("Snapshot admitted what visible refused")
	}
	if !(Key{"a", "z"}).Less(Key{"b", "a"}) || !(Key{"a", "a"}).Less(Key{"a", "b"}) || (Key{"a", "b"}).Less(Key{"a", "b"}) {
		t.Fatal("Key.Less")
	}
}

func TestNodes(t *testing.T) {
	f := newFixture(t)
	for _, spec := range []struct{ name, cg, owner string }{
		{"1", "/a/b", "/a/b"}, {"2", "/a/c/d", "/a/c"}, {"3", "/d", "/"}, {"4", "/a/b", "/a/b"},
	} {
		e := newEntry(t, "x.service", spec.name, inCgroup(spec.cg, spec.owner), pinned)
		mustPublish(t, f.s, e)
	}
	all := []Node{
		{"/", 4, 4, 1}, {"/a", 3, 3, 0}, {"/a/b", 2, 2, 2}, {"/a/c", 1, 1, 1}, {"/a/c/d", 1, 1, 0}, {"/d", 1, 1, 0},
	}
	for _, tc := range []struct {
		after string
		want  []Node
	}{
		{"", all}, {"/", all[1:]}, {"/a", all[2:]}, {"/a/b", all[3:]}, {"/a/bb", all[3:]}, {"/d", nil}, {"/z", nil},
	} {
		if got := f.s.Nodes(tc.after); !slices.Equal(got, tc.want) {
			t.Errorf("Nodes(%q) = %+v, want %+v", tc.after, got, tc.want)
		}
	}
	mustPublish(t, f.s, newEntry(t, "x.service", "5")) // unpinned, in the root cgroup
	if n, p := f.s.Counts(); n != 5 || p != 4 {
		t.Errorf("Counts = %d, %d; want 5 entries, 4 pinned", n, p)
	}
	for _, n := range []string{"1", "2", "3", "4", "5"} {
		f.s.Revoke("x.service", n, func(*Entry) error { return nil }, false)
	}
	if got := f.s.Nodes(""); len(got) != 0 {
		t.Fatalf("usage left after every entry went: %+v", got)
	}
	if n, p := f.s.Counts(); n != 0 || p != 0 {
		t.Errorf("Counts of an empty store = %d, %d", n, p)
	}
}

func TestEntryID(t *testing.T) {
	long := strings.Repeat("o", 300)
	for _, tc := range []struct {
		n           uint64
		owner, name string
		want        string
	}{
		{1, "x.service", "db", "e-1.x.service.db"},
		{42, "container:web", "a b/c", "e-42.container_web.a_b_c"},
		{7, "cgroup:/x/y", "é", "e-7.cgroup__x_y.__"},
		{18446744073709551615, "A-Z_0.9", "-", "e-18446744073709551615.A-Z_0.9.-"},
		{3, long, "n", ("e-3." + long)[:255]},
	} {
		got := EntryID(tc.n, tc.owner, tc.name)
		if got != tc.want {
			t.Errorf("EntryID(%d, %q, %q) = %q, want %q", tc.n, tc.owner, tc.name, got, tc.want)
		}
		if n, err := ParseEntryID(got); err != nil || n != tc.n {
			t.Errorf("ParseEntryID(%q) = %d, %v", got, n, err)
		}
	}
}

func TestParseEntryID(t *testing.T) {
	for _, tc := range []struct {
		id string
		n  uint64
		ok bool
	}{
		{"e-1", 1, true},
		{"e-123.x.service.db", 123, true},
		{"e-9.", 9, true},
		{"e-18446744073709551615", 18446744073709551615, true},
		{"e-" + strings.Repeat("9", 1) + "." + strings.Repeat("x", 251), 9, true}, // 255 bytes
		{"e-9." + strings.Repeat("x", 252), 0, false},                             // 256 bytes
		{"e-0", 0, false},
		{"e-01", 0, false},
		{"e-0.x", 0, false},
		{"e-", 0, false},
		{"e-.x", 0, false},
		{"e", 0, false},
		{"", 0, false},
		{"x-1", 0, false},
		{"E-1", 0, false},
		{"1", 0, false},
		{"e-+1", 0, false},
		{"e--1", 0, false},
		{"e-1x", 0, false},
		{"e-1_000", 0, false},
		{"e-18446744073709551616", 0, false},
		{"c-1", 0, false},
		{"capd-meta-1", 0, false},
	} {
		n, err := ParseEntryID(tc.id)
		if (err == nil) != tc.ok || n != tc.n {
			t.Errorf("ParseEntryID(%q) = %d, %v; want %d, ok %v", tc.id, n, err, tc.n, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "is not e-N[.OWNER.NAME]") {
			t.Errorf("ParseEntryID(%q): %v", tc.id, err)
		}
	}
}

// Entry numbers are never reused, across restarts too (SetNext).
func TestSetNext(t *testing.T) {
	f := newFixture(t)
	f.s.SetNext(0) // nothing
	mustPublish(t, f.s, newEntry(t, "x.service", "a"))
	f.s.SetNext(10)
	f.s.SetNext(5) // below: ignored
	e := newEntry(t, "x.service", "b")
	mustPublish(t, f.s, e)
	if e.ID() != "e-10.x.service.b" {
		t.Fatalf("id %s, want e-10", e.ID())
	}
	var next uint64
	n := 0
	f.s.ReadLocked(func(nx uint64, entries iter.Seq[*Entry], _ []Revoked) {
		next = nx
		for range entries {
			n++
		}
	})
	if next != 11 || n != 2 {
		t.Fatalf("ReadLocked: next %d, %d entries", next, n)
	}
}

func TestRestore(t *testing.T) {
	f := newFixture(t)
	f.w.Populate(svc, true)
	ok := owned(t, "a", svc)
	if err := f.s.Restore(ok, "e-5.x.service.a"); err != nil {
		t.Fatal(err)
	}
	if ok.ID() != "e-5.x.service.a" || f.w.Refs(svc) != 1 {
		t.Fatalf("restored entry: id %s, %d watch references", ok.ID(), f.w.Refs(svc))
	}
	dup := newEntry(t, "x.service", "a")
	expired := newEntry(t, "x.service", "old", expires(t0))
	gone := owned(t, "gone", "/system.slice/gone.service")
	boom := errors.New("watch failed")
	broken := owned(t, "broken", "/system.slice/broken.service")
	f.w.FailAdd(broken.OwnerCgroup(), boom)
	later := newEntry(t, "x.service", "later", expires(t0.Add(time.Minute)))
	for _, tc := range []struct {
		e    *Entry
		want string
	}{{dup, "duplicate"}, {expired, "expired"}, {gone, "no processes left"}, {broken, boom.Error()}, {later, ""}} {
		fd := refOf(tc.e)
		err := f.s.Restore(tc.e, "e-9")
		if tc.want == "" {
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("Restore of %s = %v, want %q", tc.e.Name(), err, tc.want)
		}
		drain(t, f.s)
		if fd.open() {
			t.Fatalf("refused restore of %s left its fd open", tc.e.Name())
		}
	}
	ev, _ := f.obs.take()
	if want := []string{"-x.service:a", "-x.service:old", "-x.service:gone", "-x.service:broken"}; !slices.Equal(ev, want) {
		t.Fatalf("observer saw %v, want %v (refused restores leave the mirror)", ev, want)
	}
	f.clk.Advance(time.Minute)
	if f.s.Len() != 1 {
		t.Fatal("restored entry did not expire")
	}
}

func TestUnpublish(t *testing.T) {
	f := newFixture(t)
	a := newEntry(t, "x.service", "a")
	mustPublish(t, f.s, a)
	a2 := newEntry(t, "x.service", "a")
	if err := f.s.Publish(a2, 0, true, func(*Entry) error { return nil }, free()); err != nil {
		t.Fatal(err)
	}
	f.s.Unpublish(a) // no longer the entry under its name: nothing
	if f.s.Acquire("x.service", "a") != a2 {
		t.Fatal("Unpublish of a replaced entry removed its replacement")
	}
	f.s.Release(a2)
	fd := refOf(a2)
	f.s.Unpublish(a2)
	drain(t, f.s)
	if f.s.Len() != 0 || fd.open() {
		t.Fatal("Unpublish left the entry")
	}
}

// A frozen store (a hand-off under way) drops nothing when an owner
// cgroup empties: the next agent process checks the owners again, and the
// mirror is not synced in the middle of the hand-off.
func TestFreezeStopsDrops(t *testing.T) {
	f := newFixture(t)
	f.w.Populate(svc, true)
	mustPublish(t, f.s, owned(t, "a", svc))
	f.obs.take()
	_, held := f.s.Freeze()
	defer f.s.ReleaseAll(held)
	n := f.s.OwnerEmptied(svc, f.w.Empty(svc)) + f.s.DropOwned(svc)
	if _, dropped := f.obs.take(); n != 0 || f.s.Len() != 1 || dropped != 0 {
		t.Fatalf("frozen store dropped %d entries (%d left) and called Dropped %d times", n, f.s.Len(), dropped)
	}
}
