package cgroup_test

import (
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
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

// cgroupID is the id the agent has of a peer's cgroup: what PIDFD_GET_INFO
// reports for a process in it, which must be the directory's inode, the
// id Hold compares.
func cgroupID(t *testing.T, cg *testutil.Cgroup) uint64 {
	t.Helper()
	cmd := cg.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pidfd, err := linux.PidfdOpen(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(pidfd)
	info, err := linux.PidfdGetInfo(pidfd, unix.PIDFD_INFO_CGROUPID)
	if err != nil || info.Mask&unix.PIDFD_INFO_CGROUPID == 0 {
		t.Fatalf("PIDFD_GET_INFO: %v (mask %#x)", err, info.Mask)
	}
	var st unix.Stat_t
	if err := unix.Stat(cg.Dir, &st); err != nil {
		t.Fatal(err)
	}
	if info.Cgroupid != st.Ino {
		t.Fatalf("PIDFD_GET_INFO reports cgroup id %d, the directory's inode is %d", info.Cgroupid, st.Ino)
	}
	return info.Cgroupid
}

// waitHold polls Hold (a lookup, no system call) until it answers ok, for
// up to 5 s, while the watcher reads the kernel's notifications; it returns
// the epoch.
func waitHold(t *testing.T, w *cgroup.Watcher, p string, id uint64, ok bool) uint64 {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		epoch, got := w.Hold(p, id)
		if got {
			w.Remove(p)
		}
		if got == ok {
			return epoch
		}
		if time.Now().After(deadline) {
			t.Fatalf("Hold(%s, %d) still %v after 5s", p, id, got)
		}
	}
}

// Hold joins a watch on the cgroup with the given id that the watcher saw
// populated last, and nothing else: no watch, another cgroup's id (a
// cgroup made again at the path), an emptying or a removal the watcher
// saw.
func TestWatcherHold(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.NewCgroup(t, "held.service")
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
	id := cgroupID(t, cg)
	if _, ok := w.Hold(cg.Path, id); ok {
		t.Fatal("Hold without a watch")
	}
	cg.Keep(t)
	epoch, pop, _, err := w.Add(cg.Path)
	if err != nil || !pop {
		t.Fatal(pop, err)
	}
	for _, bad := range []uint64{0, id + 1} {
		if _, ok := w.Hold(cg.Path, bad); ok {
			t.Fatalf("Hold with id %d of a cgroup with id %d", bad, id)
		}
	}
	if e, ok := w.Hold(cg.Path, id); !ok || e != epoch {
		t.Fatalf("Hold = %d, %v; want epoch %d", e, ok, epoch)
	}
	w.Remove(cg.Path) // the Hold's
	if w.Len() != 1 {
		t.Fatalf("watching %d cgroups", w.Len())
	}

	// Seen empty: no Hold; seen populated again: Hold, at the epoch past
	// the emptying.
	cg.Kill(t)
	emptied := expectReport(t, ch, cg.Path, 0) // once, or again for a notification the kernel held back
	if emptied <= epoch {
		t.Fatalf("emptied at epoch %d, not past %d", emptied, epoch)
	}
	waitHold(t, w, cg.Path, id, false)
	cg.Keep(t)
	if e := waitHold(t, w, cg.Path, id, true); e != emptied {
		t.Fatalf("held at epoch %d, want %d", e, emptied)
	}

	// Removed and made again: neither the old id nor the new one holds
	// until an Add moves the watch to the new cgroup.
	cg.Recreate(t)
	expectReport(t, ch, cg.Path, 0)
	cg.Keep(t)
	newID := cgroupID(t, cg)
	for _, i := range []uint64{id, newID} {
		if _, ok := w.Hold(cg.Path, i); ok {
			t.Fatalf("Hold with id %d after the cgroup was made again", i)
		}
	}
	if _, pop, _, err := w.Add(cg.Path); err != nil || !pop {
		t.Fatal(pop, err)
	}
	if _, ok := w.Hold(cg.Path, id); ok {
		t.Fatal("Hold with the removed cgroup's id")
	}
	waitHold(t, w, cg.Path, newID, true)
	w.Remove(cg.Path)
	w.Remove(cg.Path)
	if w.Len() != 0 {
		t.Fatalf("watching %d cgroups after every Remove", w.Len())
	}
}
