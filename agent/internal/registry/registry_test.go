package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capd-dev/capd/agent/internal/refusal"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

// tree is a fake cgroup hierarchy serving as both the Watcher and the
// Cgroups of a registry: each cgroup has an inode, a populated flag and a
// watch epoch (from one counter, as cgroup.Watcher's); Add counts
// references so that tests can check they are balanced.
type tree struct {
	mu            sync.Mutex
	epoch         uint64
	cgs           map[string]*node
	adds, removes int
	bad           []string // Removes without a reference
	addErr        error    // Add fails with it
	idErr         error    // ID fails with it
	popErr        error    // Populated fails with it
}

type node struct {
	ino       uint64 // 0: no such cgroup
	populated bool
	epoch     uint64
	refs      int
	recreated bool // the next Add finds the cgroup made again
}

func newTree() *tree { return &tree{cgs: make(map[string]*node)} }

func (t *tree) nodeLocked(p string) *node {
	n := t.cgs[p]
	if n == nil {
		n = &node{epoch: t.epoch}
		t.cgs[p] = n
	}
	return n
}

// mk makes cgroup p with inode ino and a process in it.
func (t *tree) mk(p string, ino uint64) {
	t.mu.Lock()
	n := t.nodeLocked(p)
	n.ino, n.populated = ino, true
	t.mu.Unlock()
}

// empty makes p empty and returns the epoch of the emptying.
func (t *tree) empty(p string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodeLocked(p)
	t.epoch++
	n.epoch, n.populated = t.epoch, false
	return n.epoch
}

// recreate removes p and makes it again with inode ino, populated; the
// next Add finds out (if p was watched).
func (t *tree) recreate(p string, ino uint64) {
	t.mu.Lock()
	n := t.nodeLocked(p)
	n.ino, n.populated, n.recreated = ino, true, true
	t.mu.Unlock()
}

func (t *tree) Add(p string) (epoch uint64, populated, recreated bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.addErr != nil {
		return 0, false, false, t.addErr
	}
	n := t.nodeLocked(p)
	if n.refs == 0 {
		n.epoch = t.epoch // a watch made anew starts at the counter
	}
	if n.recreated {
		n.recreated = false
		if n.refs > 0 {
			t.epoch++
			n.epoch, recreated = t.epoch, true
		}
	}
	n.refs++
	t.adds++
	return n.epoch, n.populated, recreated, nil
}

func (t *tree) Remove(p string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.cgs[p]
	if n == nil || n.refs == 0 {
		t.bad = append(t.bad, p)
		return
	}
	n.refs--
	t.removes++
}

func (t *tree) ID(p string) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.idErr != nil {
		return 0, t.idErr
	}
	if n := t.cgs[p]; n != nil && n.ino != 0 {
		return n.ino, nil
	}
	return 0, &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
}

func (t *tree) Populated(p string) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.popErr != nil {
		return false, t.popErr
	}
	n := t.cgs[p]
	return n != nil && n.populated, nil
}

func (t *tree) refs(p string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.cgs[p]; n != nil {
		return n.refs
	}
	return 0
}

// checkBalanced fails tb unless every reference Add took was dropped.
func (t *tree) checkBalanced(tb testing.TB) {
	tb.Helper()
	t.mu.Lock()
	defer t.mu.Unlock()
	for p, n := range t.cgs {
		if n.refs != 0 {
			tb.Errorf("watcher: %d references left on %s", n.refs, p)
		}
	}
	if t.adds != t.removes || len(t.bad) > 0 {
		tb.Errorf("watcher: %d Adds, %d Removes; Removes without a reference: %v", t.adds, t.removes, t.bad)
	}
}

// newRegistry returns a registry on tr, closed at the end of the test,
// after which every watch reference must be gone.
func newRegistry(t *testing.T, tr *tree) *Registry {
	r := NewRegistry(tr, tr)
	t.Cleanup(func() {
		r.Close()
		tr.checkBalanced(t)
	})
	return r
}

func wantKind(t testing.TB, err, kind error, msgHas string) {
	t.Helper()
	var re *refusal.Error
	if !errors.Is(err, kind) || !errors.As(err, &re) || re.Kind != kind || re.Error() != re.Msg || !strings.Contains(re.Msg, msgHas) {
		t.Fatalf("error %v (%T), want a *refusal.Error of kind %q saying %q", err, err, kind, msgHas)
	}
}

func mustAdd(t testing.TB, r *Registry, c *Container) {
	t.Helper()
	if err := r.Add(c); err != nil {
		t.Fatalf("Add %s: %v", c.ID, err)
	}
}

func TestNewContainer(t *testing.T) {
	c := New("c1", "web", "/ctr/c1", 7)
	if c.Identity != "container:web" || !slices.Equal(c.Aliases, []string{"container:c1"}) || c.Cgroup != "/ctr/c1" || c.CgroupID != 7 {
		t.Fatalf("named: %+v", c)
	}
	c = New("c2", "", "/ctr/c2", 0)
	if c.Identity != "container:c2" || c.Aliases != nil || !slices.Equal(c.names(), []string{"container:c2"}) {
		t.Fatalf("unnamed: %+v", c)
	}
}

func TestAddLookup(t *testing.T) {
	tr := newTree()
	tr.mk("/ctr/c1", 10)
	r := newRegistry(t, tr)
	if r.Lookup("/ctr/c1") != nil || r.Len() != 0 {
		t.Fatal("empty registry found something")
	}
	c := New("c1", "web", "/ctr/c1", 0)
	mustAdd(t, r, c)
	if c.CgroupID != 10 || r.Len() != 1 || tr.refs("/ctr/c1") != 1 {
		t.Fatalf("registered %+v, %d watch references", c, tr.refs("/ctr/c1"))
	}
	for _, tc := range []struct {
		p    string
		want *Container
	}{
		{"/ctr/c1", c}, {"/ctr/c1/sub", c}, {"/ctr/c1/a/b/c", c},
		{"/ctr", nil}, {"/", nil}, {"/ctr/c10", nil}, {"/ctr/c", nil}, {"/other/ctr/c1", nil},
	} {
		if got := r.Lookup(tc.p); got != tc.want {
			t.Errorf("Lookup(%s) = %v, want %v", tc.p, got, tc.want)
		}
	}
}

func TestIdentify(t *testing.T) {
	dir := t.TempDir()
	old := MachinesDir
	MachinesDir = dir
	defer func() { MachinesDir = old }()
	os.Symlink("m1", filepath.Join(dir, "unit:machine-m1.scope"))

	tr := newTree()
	tr.mk("/ctr/c1", 10)
	tr.mk("/ctr/c2", 11)
	r := newRegistry(t, tr)
	mustAdd(t, r, New("c1", "web", "/ctr/c1", 0))
	mustAdd(t, r, New("c2", "", "/ctr/c2", 0))
	for _, tc := range []struct {
		p    string
		want Identity
	}{
		{"/ctr/c1", Identity{"container:web", []string{"container:c1"}, "/ctr/c1", "c1"}},
		{"/ctr/c1/system.slice/x.service", Identity{"container:web", []string{"container:c1"}, "/ctr/c1", "c1"}},
		{"/ctr/c2/x", Identity{"container:c2", nil, "/ctr/c2", "c2"}},
		{"/system.slice/x.service", Identity{"x.service", nil, "/system.slice/x.service", ""}},
		{"/system.slice/x.service/sub", Identity{"x.service", nil, "/system.slice/x.service", ""}},
		{"/user.slice/user-1000.slice/session-3.scope", Identity{"session-3.scope", nil, "/user.slice/user-1000.slice/session-3.scope", ""}},
		{"/ctr/c3", Identity{"cgroup:/ctr/c3", nil, "/ctr/c3", ""}},
		{"/", Identity{"cgroup:/", nil, "/", ""}},
		{"/machine.slice/machine-m1.scope/payload", Identity{"machine:m1", []string{"machine-m1.scope"}, "/machine.slice/machine-m1.scope", "machine:m1"}},
		{"/machine.slice/machine-m2.scope", Identity{"machine-m2.scope", nil, "/machine.slice/machine-m2.scope", ""}},
	} {
		got := r.Identify(tc.p)
		if got.Name != tc.want.Name || !slices.Equal(got.Aliases, tc.want.Aliases) || got.OwnerCgroup != tc.want.OwnerCgroup || got.Container != tc.want.Container {
			t.Errorf("Identify(%s) = %+v, want %+v", tc.p, got, tc.want)
		}
	}
}

// The same id registered again from the same cgroup (prestart and
// createRuntime, a retried hook) keeps one registration and one watch.
func TestAddIdempotent(t *testing.T) {
	tr := newTree()
	tr.mk("/ctr/c1", 10)
	r := newRegistry(t, tr)
	first := New("c1", "web", "/ctr/c1", 0)
	mustAdd(t, r, first)
	again := New("c1", "web", "/ctr/c1", 10)
	mustAdd(t, r, again)
	mustAdd(t, r, again) // the very same one
	if r.Len() != 1 || tr.refs("/ctr/c1") != 1 || r.Lookup("/ctr/c1") != again {
		t.Fatalf("%d registrations, %d watch references", r.Len(), tr.refs("/ctr/c1"))
	}
	if all := r.All(); len(all) != 1 || all[0].ID != "c1" {
		t.Fatalf("All = %+v", all)
	}
}

func TestAddConflicts(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    *Container
		msg  string
	}{
		{"same id, other cgroup", New("c1", "web", "/ctr/b", 0), "container id c1 is registered with cgroup /ctr/a"},
		{"same cgroup, other id", New("c2", "db", "/ctr/a", 0), "cgroup /ctr/a is registered to container c1"},
		{"same id and cgroup, other name", New("c1", "db", "/ctr/a", 0), `container c1 is registered under the name "web"`},
		{"same id and cgroup, no name", New("c1", "", "/ctr/a", 0), `registered under the name "web"`},
		{"name taken", New("c2", "web", "/ctr/b", 0), "identity container:web is registered to container c1"},
		{"id is a taken name", New("web", "", "/ctr/b", 0), "identity container:web is registered to container c1"},
		{"name is a taken id", New("c3", "c1", "/ctr/b", 0), "identity container:c1 is registered to container c1"},
		{"another container", New("c2", "x", "/ctr/b", 0), ""}, // no clash: accepted
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree()
			tr.mk("/ctr/a", 10)
			tr.mk("/ctr/b", 11)
			r := newRegistry(t, tr)
			c1 := New("c1", "web", "/ctr/a", 0)
			mustAdd(t, r, c1)
			err := r.Add(tc.c)
			if tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantKind(t, err, ErrConflict, tc.msg)
			if r.Len() != 1 || r.Lookup("/ctr/a") != c1 || r.Identify("/ctr/b").Container != "" {
				t.Fatal("a refused registration changed the registry")
			}
			if tr.refs("/ctr/a") != 1 || tr.refs("/ctr/b") != 0 {
				t.Fatalf("watch references %d, %d after a refusal", tr.refs("/ctr/a"), tr.refs("/ctr/b"))
			}
		})
	}
}

func TestAddGone(t *testing.T) {
	tr := newTree()
	tr.mk("/ctr/empty", 10)
	tr.empty("/ctr/empty")
	tr.mk("/ctr/new", 12)
	r := newRegistry(t, tr)
	wantKind(t, r.Add(New("c1", "", "/ctr/empty", 0)), ErrGone, "container c1: cgroup /ctr/empty has no processes left")
	wantKind(t, r.Add(New("c2", "", "/ctr/new", 11)), ErrGone, "is not the one registered (it was removed and created again)")
	if r.Len() != 0 || tr.refs("/ctr/empty") != 0 || tr.refs("/ctr/new") != 0 {
		t.Fatal("refused registrations kept something")
	}
	mustAdd(t, r, New("c2", "", "/ctr/new", 12)) // the right inode
}

func TestAddErrors(t *testing.T) {
	tr := newTree()
	tr.mk("/ctr/a", 10)
	r := newRegistry(t, tr)
	boom := errors.New("inotify: no space left")
	tr.addErr = boom
	if err := r.Add(New("c1", "", "/ctr/a", 0)); !errors.Is(err, boom) {
		t.Fatalf("Add with a failing watcher = %v", err)
	}
	if adds, removes := tr.adds, tr.removes; adds != 0 || removes != 0 {
		t.Fatalf("%d Adds, %d Removes after a failed Add", adds, removes)
	}
	tr.addErr = nil
	tr.idErr = errors.New("stat: permission denied")
	if err := r.Add(New("c1", "", "/ctr/a", 0)); !errors.Is(err, tr.idErr) || !strings.Contains(err.Error(), "cgroup /ctr/a") {
		t.Fatalf("Add with a failing stat = %v", err)
	}
	if r.Len() != 0 || tr.refs("/ctr/a") != 0 {
		t.Fatal("failed registration kept something")
	}
}

func TestUnregister(t *testing.T) {
	tr := newTree()
	tr.mk("/ctr/a", 10)
	r := newRegistry(t, tr)
	_, err := r.Unregister("c1")
	wantKind(t, err, ErrNotFound, "container c1 is not registered")
	c := New("c1", "web", "/ctr/a", 0)
	mustAdd(t, r, c)
	_, err = r.Unregister("c1")
	wantKind(t, err, ErrStillRunning, "still has processes")
	if r.Lookup("/ctr/a") != c {
		t.Fatal("a live container was unregistered")
	}
	tr.popErr = errors.New("read cgroup.events: EIO")
	if _, err := r.Unregister("c1"); !errors.Is(err, tr.popErr) || r.Len() != 1 {
		t.Fatalf("Unregister with a failing read = %v", err)
	}
	tr.popErr = nil
	tr.empty("/ctr/a")
	got, err := r.Unregister("c1")
	if err != nil || got != c {
		t.Fatalf("Unregister of an empty container = %v, %v", got, err)
	}
	if r.Len() != 0 || r.Lookup("/ctr/a/x") != nil || tr.refs("/ctr/a") != 0 {
		t.Fatal("unregistered container left something")
	}
	_, err = r.Unregister("c1")
	wantKind(t, err, ErrNotFound, "not registered")
	// Its name and id are free again.
	tr.mk("/ctr/b", 11)
	mustAdd(t, r, New("web", "c1", "/ctr/b", 0))
}

// An emptying ends only the registrations made before it.
func TestEmptied(t *testing.T) {
	tr := newTree()
	tr.mk("/ctr/a", 10)
	tr.mk("/ctr/b", 11)
	r := newRegistry(t, tr)
	before := tr.empty("/ctr/a") // an emptying before the registration
	tr.mk("/ctr/a", 10)
	c := New("c1", "", "/ctr/a", 0)
	mustAdd(t, r, c)
	mustAdd(t, r, New("c2", "", "/ctr/b", 0))
	if r.Emptied("/ctr/a", before) != nil || r.Emptied("/ctr/a", c.epoch) != nil || r.Emptied("/ctr/none", 1<<60) != nil {
		t.Fatal("Emptied ended a registration made after the emptying")
	}
	if got := r.Emptied("/ctr/a", tr.empty("/ctr/a")); got != c {
		t.Fatalf("Emptied = %v, want c1", got)
	}
	if r.Len() != 1 || r.Lookup("/ctr/a") != nil || tr.refs("/ctr/a") != 0 {
		t.Fatal("emptied registration left something")
	}
	if r.Emptied("/ctr/a", 1<<60) != nil {
		t.Fatal("Emptied twice")
	}
}

// A cgroup removed and made again at the same path is another cgroup: a
// registration of the old one is stale and gives way.
func TestRecreatedReplacesStale(t *testing.T) {
	for _, tc := range []struct {
		name     string
		id       string // the new registration's id
		watchers bool   // the watcher notices (else only the inode differs)
	}{
		{"watcher, other container", "c2", true},
		{"watcher, same id", "c1", true},
		{"inode, other container", "c2", false},
		{"inode, same id", "c1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree()
			tr.mk("/ctr/a", 10)
			r := newRegistry(t, tr)
			mustAdd(t, r, New("c1", "web", "/ctr/a", 0))
			if tc.watchers {
				tr.recreate("/ctr/a", 10) // same inode number, new cgroup
			} else {
				tr.mk("/ctr/a", 20)
			}
			c := New(tc.id, "web", "/ctr/a", 0)
			mustAdd(t, r, c)
			if r.Len() != 1 || r.Lookup("/ctr/a") != c || tr.refs("/ctr/a") != 1 {
				t.Fatalf("%d registrations, %d watch references; want the new one only", r.Len(), tr.refs("/ctr/a"))
			}
			if id := r.Identify("/ctr/a").Container; id != tc.id {
				t.Fatalf("identity of container %s", id)
			}
		})
	}
}

func TestOverlapping(t *testing.T) {
	tr := newTree()
	tr.mk("/a/b", 10)
	r := newRegistry(t, tr)
	if r.Overlapping("/a") != "" {
		t.Fatal("empty registry overlaps")
	}
	mustAdd(t, r, New("c1", "", "/a/b", 0))
	for _, tc := range []struct{ p, want string }{
		{"/", "c1"}, {"/a", "c1"}, {"/a/b/c", "c1"}, {"/a/b/c/d", "c1"},
		{"/a/b", ""}, {"/a/bc", ""}, {"/a/c", ""}, {"/x", ""},
	} {
		if got := r.Overlapping(tc.p); got != tc.want {
			t.Errorf("Overlapping(%s) = %q, want %q", tc.p, got, tc.want)
		}
	}
}

func TestAllSorted(t *testing.T) {
	tr := newTree()
	r := newRegistry(t, tr)
	for i, id := range []string{"c3", "c1", "c10", "c2"} {
		p := "/ctr/" + id
		tr.mk(p, uint64(10+i))
		mustAdd(t, r, New(id, "n"+id, p, 0))
	}
	all := r.All()
	var ids []string
	for _, c := range all {
		ids = append(ids, c.ID)
	}
	if !slices.Equal(ids, []string{"c1", "c10", "c2", "c3"}) {
		t.Fatalf("All = %v", ids)
	}
	all[0].Cgroup = "/changed"
	if r.Lookup("/ctr/c1").Cgroup != "/ctr/c1" {
		t.Fatal("All returned the registrations, not copies")
	}
}

func TestClose(t *testing.T) {
	tr := newTree()
	r := NewRegistry(tr, tr)
	for i := range 5 {
		p := fmt.Sprintf("/ctr/c%d", i)
		tr.mk(p, uint64(10+i))
		mustAdd(t, r, New(fmt.Sprint("c", i), "", p, 0))
	}
	r.Close()
	if r.Len() != 0 || r.Lookup("/ctr/c1") != nil || len(r.byIdent) != 0 || len(r.byCgroup) != 0 {
		t.Fatal("Close left registrations")
	}
	tr.checkBalanced(t)
	r.Close()
}

// Every method may run concurrently with every other (-race).
func TestConcurrent(t *testing.T) {
	tr := newTree()
	r := newRegistry(t, tr)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 30 {
				id := fmt.Sprintf("c%d-%d", i, j)
				p := "/ctr/" + id
				tr.mk(p, uint64(i*100+j+1))
				if err := r.Add(New(id, "n"+id, p, 0)); err != nil {
					t.Error(err)
					return
				}
				r.Lookup(p + "/x")
				r.Identify(p)
				r.Overlapping("/ctr")
				r.All()
				if j%3 == 0 {
					r.Emptied(p, tr.empty(p))
				} else if j%3 == 1 {
					tr.empty(p)
					if _, err := r.Unregister(id); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if r.Len() != 8*10 {
		t.Fatalf("%d registrations left, want 80", r.Len())
	}
}

// hookTree runs onID inside Add, between the watch and the registration.
type hookTree struct {
	*tree
	onID func(p string)
}

func (h *hookTree) ID(p string) (uint64, error) {
	if h.onID != nil {
		h.onID(p)
	}
	return h.tree.ID(p)
}

// An emptying the watcher reports while Add runs is not lost: Add holds
// the lock Emptied takes, so the emptying ends the registration it
// concerns instead of finding nothing and leaving one that outlives its
// cgroup.
func TestAddRacingEmptied(t *testing.T) {
	tr := &hookTree{tree: newTree()}
	tr.mk("/ctr/a", 10)
	r := NewRegistry(tr, tr)
	defer func() { r.Close(); tr.checkBalanced(t) }()
	emptied := make(chan *Container, 1)
	var got *Container
	received := false
	tr.onID = func(p string) { // after watch.Add returned populated
		tr.onID = nil
		epoch := tr.empty(p)
		go func() { emptied <- r.Emptied(p, epoch) }() // the watcher's goroutine
		// Give the report the chance to arrive inside Add; it may only
		// wait for Add to finish (with a lock held, it cannot get in).
		select {
		case got = <-emptied:
			received = true
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := r.Add(New("c1", "web", "/ctr/a", 0)); err != nil {
		t.Fatal(err)
	}
	if !received {
		got = <-emptied
	}
	if c := got; c == nil || c.ID != "c1" {
		t.Fatalf("the emptying reported during Add ended %v, want c1", c)
	}
	if c := r.Lookup("/ctr/a"); c != nil {
		t.Fatalf("registration at epoch %d outlives the emptying reported during Add", c.epoch)
	}
}

// A cgroup that is gone is ErrGone (the agent's invalid-request), not an
// internal error from reading its inode.
func TestAddRemovedCgroup(t *testing.T) {
	r := newRegistry(t, newTree()) // /ctr/gone does not exist
	if err := r.Add(New("c1", "", "/ctr/gone", 0)); !errors.Is(err, ErrGone) {
		t.Fatalf("Add of a removed cgroup = %v, want ErrGone", err)
	}
}

// A pod's containers are pod:NAMESPACE/POD/NAME and share the alias
// pod:NAMESPACE/POD, which is no conflict; the same name twice in a pod is.
func TestPodContainers(t *testing.T) {
	tr := newTree()
	tr.mk("/kubepods/p1/a", 10)
	tr.mk("/kubepods/p1/b", 11)
	tr.mk("/kubepods/p1/c", 12)
	r := newRegistry(t, tr)
	a := NewInPod("ca", "payments/web", "app", "/kubepods/p1/a", 0)
	mustAdd(t, r, a)
	mustAdd(t, r, NewInPod("cb", "payments/web", "sidecar", "/kubepods/p1/b", 0))
	id := r.Identify("/kubepods/p1/a/sub")
	if id.Name != "pod:payments/web/app" || !slices.Equal(id.Aliases, []string{"pod:payments/web"}) || id.Container != "ca" || id.OwnerCgroup != "/kubepods/p1/a" {
		t.Fatalf("Identify = %+v", id)
	}
	wantKind(t, r.Add(NewInPod("cc", "payments/web", "app", "/kubepods/p1/c", 0)), ErrConflict, "identity pod:payments/web/app is registered to container ca")
	if r.Len() != 2 {
		t.Fatalf("%d registrations, want 2", r.Len())
	}
}

// A live container registered again with the same id, cgroup and
// name but another pod (or a pod where there was none) changes identity:
// Add compares the old registration's Name, not its Pod. The same id from
// the same cgroup must keep the identity it has (as a changed name does).
func TestReregisterCannotChangeIdentity(t *testing.T) {
	for _, tc := range []struct {
		name        string
		first, then *Container
	}{
		{"pod to other pod", NewInPod("c1", "payments/web", "app", "/kubepods/p1/a", 0), NewInPod("c1", "shop/db-0", "app", "/kubepods/p1/a", 0)},
		{"container to pod", New("c1", "app", "/kubepods/p1/a", 0), NewInPod("c1", "payments/web", "app", "/kubepods/p1/a", 0)},
		{"pod to container", NewInPod("c1", "payments/web", "app", "/kubepods/p1/a", 0), New("c1", "app", "/kubepods/p1/a", 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree()
			tr.mk("/kubepods/p1/a", 10)
			r := newRegistry(t, tr)
			mustAdd(t, r, tc.first)
			err := r.Add(tc.then)
			if id := r.Identify("/kubepods/p1/a").Name; id != tc.first.Identity {
				t.Errorf("identity of the live container changed from %s to %s by a second registration (Add: %v)", tc.first.Identity, id, err)
			}
			wantKind(t, err, ErrConflict, "")
		})
	}
}
