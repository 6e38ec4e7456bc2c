package cgroup_test

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

type report struct {
	path  string
	epoch uint64
}

// expectReport waits for reports on path until 300 ms pass without one
// (the kernel delays a notification by up to 20 ms; a loaded machine
// delivers it later still),
// and returns the last epoch, which must be epoch unless epoch is 0.
func expectReport(t *testing.T, ch <-chan report, path string, epoch uint64) uint64 {
	t.Helper()
	var last uint64
	wait := 5 * time.Second
	for {
		select {
		case r := <-ch:
			if r.path != path || r.epoch <= last {
				t.Fatalf("report %+v after epoch %d, want %s", r, last, path)
			}
			last, wait = r.epoch, 300*time.Millisecond
		case <-time.After(wait):
			if last == 0 {
				t.Fatalf("no report for %s within 5s", path)
			}
			if epoch != 0 && last != epoch {
				t.Fatalf("last report at epoch %d, want %d", last, epoch)
			}
			return last
		}
	}
}

func expectQuiet(t *testing.T, ch <-chan report) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("unexpected report %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
}

// A real cgroup: populated while a process runs in it (or in a child
// cgroup), reported once empty, again when removed; a cgroup created at the
// same path afterwards is watched afresh.
func TestWatcherFollowsARealCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.NewCgroup(t, "watched.service")
	child := testutil.NewCgroup(t, "watched.service/sub")
	mount, err := cgroup.V2Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan report, 16)
	w, err := cgroup.NewWatcher(mount, func(p string, epoch uint64) { ch <- report{p, epoch} })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	if _, pop, _, err := w.Add(cg.Path); err != nil || pop {
		t.Fatalf("Add on an empty cgroup = %v, %v; want not populated", pop, err)
	}
	w.Remove(cg.Path)
	if w.Len() != 0 {
		t.Fatalf("watching %d cgroups after the last Remove", w.Len())
	}

	child.Keep(t) // a process below the owner cgroup populates it
	epoch, pop, _, err := w.Add(cg.Path)
	if err != nil || !pop || epoch != 0 {
		t.Fatalf("Add = %d, %v, %v; want epoch 0, populated", epoch, pop, err)
	}
	if _, _, _, err := w.Add(cg.Path); err != nil { // a second holder
		t.Fatal(err)
	}
	expectQuiet(t, ch)
	cg.Kill(t)
	expectReport(t, ch, cg.Path, 1)

	// Repopulated, then killed and removed at once, while still held:
	// the emptying may be reported, the removal must be (a notification
	// still delayed by the kernel's 20 ms rate limit dies with the cgroup).
	// The next Add watches the new cgroup at the same path.
	cg.Keep(t)
	cg.Recreate(t)
	last := expectReport(t, ch, cg.Path, 0)
	cg.Keep(t)
	epoch, pop, _, err = w.Add(cg.Path)
	if err != nil || !pop || epoch != last {
		t.Fatalf("Add on the new cgroup = %d, %v, %v; want epoch %d, populated", epoch, pop, err, last)
	}
	cg.Kill(t)
	expectReport(t, ch, cg.Path, last+1)
	for i := 0; i < 3; i++ {
		w.Remove(cg.Path)
	}
	if w.Len() != 0 {
		t.Fatalf("watching %d cgroups after every Remove", w.Len())
	}
	if _, _, _, err := w.Add("/"); err == nil {
		t.Fatal("the root cgroup was accepted for watching")
	}
}

// A cgroup removed and created again while still watched, with the
// watcher's reports held up: the next Add hands the new holder an epoch
// past the old cgroup's, and no report delivered afterwards reaches it.
func TestWatcherRecreatedBeforeEvents(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.NewCgroup(t, "re.service")
	mount, err := cgroup.V2Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan report, 16)
	block := make(chan struct{})
	w, err := cgroup.NewWatcher(mount, func(p string, epoch uint64) { <-block; ch <- report{p, epoch} })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var once sync.Once
	release := func() { once.Do(func() { close(block) }) }
	defer release() // before Close, even when the test fails
	cg.Keep(t)
	e1, pop, _, err := w.Add(cg.Path)
	if err != nil || !pop {
		t.Fatal(pop, err)
	}
	cg.Recreate(t) // the watcher goroutine is (or will be) stuck in the callback
	cg.Keep(t)
	// Either the watcher already saw the old cgroup go (its report waits
	// in the callback) or Add finds the watch on a removed cgroup
	// (recreated): both ways the new holder's epoch is past the old one.
	e2, pop, recreated, err := w.Add(cg.Path)
	if err != nil || !pop || e2 <= e1 {
		t.Fatalf("Add after recreation = %d, %v, %v, %v; first epoch %d", e2, pop, recreated, err, e1)
	}
	release()
	// Whatever comes for the old cgroup must not reach the new one.
	for {
		select {
		case r := <-ch:
			if r.epoch > e2 {
				t.Fatalf("report %+v after the new watch at epoch %d", r, e2)
			}
		case <-time.After(300 * time.Millisecond):
			w.Remove(cg.Path)
			w.Remove(cg.Path)
			return
		}
	}
}
