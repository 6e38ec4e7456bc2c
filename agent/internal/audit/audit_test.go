package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/procfs"
	"github.com/capd-dev/capd/internal/proto"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

// env returns an Env as the agent builds it: cgroups by id through a
// cgroup.Resolver, the fallback from /proc/PID/cgroup checked against the
// pidfd, identities "cgroup:PATH"; and the log it writes to.
func env(t *testing.T) (Env, *bytes.Buffer) {
	t.Helper()
	var log bytes.Buffer
	e := Env{
		Log: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		CgroupOf: func(pidfd, pid int) (string, error) {
			p, err := cgroup.ProcPath(pid)
			if err != nil {
				return "", err
			}
			if alive, err := linux.PidfdAlive(pidfd); err != nil || !alive {
				return "", fmt.Errorf("pid %d exited: %w", pid, unix.ESRCH)
			}
			return p, nil
		},
		Identity: func(cg string) string { return "cgroup:" + cg },
	}
	if r, err := cgroup.NewResolver(); err == nil {
		t.Cleanup(func() { r.Close() })
		e.PathByID = r.PathByID
	} else {
		t.Logf("no cgroup resolver (%v): cgroups come from /proc", err)
	}
	return e, &log
}

// holders returns the holders of entry name in entries, by pid.
func holders(entries []proto.AuditEntry, name string) map[int]proto.AuditHolder {
	out := map[int]proto.AuditHolder{}
	for _, e := range entries {
		if e.Name == name {
			for _, h := range e.Holders {
				out[h.PID] = h
			}
		}
	}
	return out
}

// fileFD wraps fd, which the test closes at its end.
func fileFD(t *testing.T, fd int, name string) *os.File {
	t.Helper()
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

func memfd(t *testing.T, name string) *os.File {
	t.Helper()
	fd, err := linux.MemfdCreate(name)
	if err != nil {
		t.Fatal(err)
	}
	return fileFD(t, fd, name)
}

func run(t *testing.T, e Env, live []Item, tombs []Tomb) *proto.AuditReport {
	t.Helper()
	rep, err := Run(e, live, tombs)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// A memfd held by a child is found at the child's fd, with its cgroup,
// identity and uid, and the agent (this process) is not among its holders;
// once the child has exited it is not.
func TestRunLiveHolder(t *testing.T) {
	e, _ := env(t)
	f := memfd(t, "audit-live")
	pid, stop := testutil.Holding(t, -1, f)
	live := []Item{{Owner: "o", Name: "m", Kind: "memfd", FD: int(f.Fd())}}

	rep := run(t, e, live, nil)
	if len(rep.Entries) != 1 || rep.Entries[0].Owner != "o" || rep.Entries[0].Kind != "memfd" {
		t.Fatalf("entries %+v", rep.Entries)
	}
	hs := holders(rep.Entries, "m")
	h, ok := hs[pid]
	if len(hs) != 1 || !ok || h.FD != 3 {
		t.Fatalf("holders %+v, want pid %d at fd 3", hs, pid)
	}
	cg, err := cgroup.ProcPath(pid)
	if err != nil {
		t.Fatal(err)
	}
	if h.Cgroup != cg || h.Identity != "cgroup:"+cg {
		t.Errorf("cgroup %q identity %q, want %q", h.Cgroup, h.Identity, cg)
	}
	if h.UID != os.Getuid() {
		t.Errorf("uid %d, want %d", h.UID, os.Getuid())
	}
	if rep.Processes == 0 || rep.FDs == 0 || len(rep.Removed) != 0 || rep.Removed == nil {
		t.Errorf("processes %d fds %d removed %+v", rep.Processes, rep.FDs, rep.Removed)
	}

	stop()
	rep = run(t, e, live, nil)
	if len(rep.Entries) != 1 || rep.Entries[0].Holders == nil || len(rep.Entries[0].Holders) != 0 {
		t.Errorf("after the holder's exit: entries %+v, want one without holders", rep.Entries)
	}
}

// A holder is described through a pidfd taken by pid after its scan and
// is kept only if the process its /proc directory is bound to is still
// there: one that has exited is left out, and so is a pid that names
// another process by then (a recycled pid; here a directory bound to an
// exited process, with the pid of a running one).
func TestHolderLeftOutOnceExited(t *testing.T) {
	e, _ := env(t)
	a := newAuditor(e, nil, nil)
	open := func(pid int) procfs.Dir {
		d, err := procfs.Open(pid)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	pid, _ := testutil.Holding(t, -1)
	gonePID, stop := testutil.Holding(t, -1)
	gone := open(gonePID)
	stop()

	h, ok := a.holder(&proc{pid: pid, dir: open(pid), pidfd: -1}, 0)
	if cg, err := cgroup.ProcPath(pid); !ok || h.PID != pid || h.UID != os.Getuid() || err != nil || h.Cgroup != cg {
		t.Errorf("running process: %+v, %v; want pid %d, uid %d, cgroup %q (%v)", h, ok, pid, os.Getuid(), cg, err)
	}
	if h, ok := a.holder(&proc{pid: gonePID, dir: gone, pidfd: -1}, 0); ok {
		t.Errorf("exited process reported: %+v", h)
	}
	if h, ok := a.holder(&proc{pid: pid, dir: gone, pidfd: -1}, 0); ok {
		t.Errorf("a pid naming another process than the scanned one reported: %+v", h)
	}
}

// A holder's copy of a file named by a path is found by its link when the
// link is the one the agent read for its own copy, and by its fdinfo when
// the file was renamed in between; another file under the name the agent
// Once a process is found holding a file of an entry's key (by its
// fdinfo), its other files whose link reads as an entry's file's are
// compared by kcmp at once, without their fdinfo; a file renamed since the
// agent read its own copy's link is still found by its fdinfo. A process
// holding only another file under a name that reads the same is never
// compared by kcmp (kcmp waits for a process stuck in execve).
func TestScanByLink(t *testing.T) {
	e, _ := env(t)
	dir := t.TempDir()
	f, err := os.Create(dir + "/a")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pid, _ := testutil.Holding(t, -1, f, f)
	live := []Item{{Name: "f", Kind: "file", FD: int(f.Fd())}}
	want := []match{{0, 3}, {0, 4}}

	a := newAuditor(e, live, nil)
	if err := a.index(); err != nil {
		t.Fatal(err)
	}
	fdinfos := a.fdinfos
	if lm := scanned(t, a, pid); !slices.Equal(lm, want) {
		t.Errorf("matches %+v, want %+v", lm, want)
	}
	byLink := a.fdinfos - fdinfos

	a = newAuditor(e, live, nil)
	if err := a.index(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+"/a", dir+"/b"); err != nil {
		t.Fatal(err)
	}
	fdinfos = a.fdinfos
	if lm := scanned(t, a, pid); !slices.Equal(lm, want) {
		t.Errorf("renamed after the index: matches %+v, want %+v", lm, want)
	}
	if renamed := a.fdinfos - fdinfos; byLink != renamed-1 {
		t.Errorf("%d fdinfo reads with the links as the agent read them, %d after a rename: want one less", byLink, renamed)
	}

	a = newAuditor(e, live, nil)
	if err := a.index(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+"/b", dir+"/c"); err != nil {
		t.Fatal(err)
	}
	g, err := os.Create(dir + "/b") // its link reads as the entry's did at the index
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	alike, _ := testutil.Holding(t, -1, g, g)
	if lm := scanned(t, a, alike); len(lm) != 0 || a.kcmps != 0 {
		t.Errorf("a process with another file under the entry's name: matches %+v after %d kcmp calls, want none and none", lm, a.kcmps)
	}
}

// scanned returns the live matches of a's scan of pid.
func scanned(t *testing.T, a *auditor, pid int) []match {
	t.Helper()
	d, err := procfs.Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	lm, _, _ := a.scan(&proc{pid: pid, dir: d, pidfd: -1})
	return lm
}

// The fallbacks (OldKernel: cgroups from CgroupOf, uids from
// /proc/PID/status) give the same holder as PIDFD_GET_INFO.
func TestRunOldKernel(t *testing.T) {
	e, _ := env(t)
	f := memfd(t, "audit-old")
	pid, _ := testutil.Holding(t, -1, f)
	live := []Item{{Name: "m", Kind: "memfd", FD: int(f.Fd())}}
	modern := holders(run(t, e, live, nil).Entries, "m")[pid]
	byID := e.PathByID
	e.PathByID = func(id uint64) (string, error) {
		t.Errorf("PathByID(%d) called with OldKernel", id)
		return byID(id)
	}
	e.OldKernel = true
	old := holders(run(t, e, live, nil).Entries, "m")[pid]
	if fmt.Sprint(old) != fmt.Sprint(modern) || old.Cgroup == "" || old.PID != pid {
		t.Errorf("fallback holder %+v, modern %+v", old, modern)
	}
}

// Entries sharing one open file description (the same fd, a dup) are
// grouped and each reported with the holder; a memfd of its own with the
// same name is not confused with them.
func TestRunSharedOFD(t *testing.T) {
	e, _ := env(t)
	f := memfd(t, "audit-shared")
	dup, err := linux.DupCloexec(int(f.Fd()), 3)
	if err != nil {
		t.Fatal(err)
	}
	fileFD(t, dup, "dup")
	other := memfd(t, "audit-shared")
	pid, _ := testutil.Holding(t, -1, f)
	otherPID, _ := testutil.Holding(t, -1, other)
	live := []Item{
		{Name: "a", Kind: "memfd", FD: int(f.Fd())},
		{Name: "b", Kind: "memfd", FD: dup},
		{Name: "c", Kind: "memfd", FD: int(f.Fd())},
		{Name: "other", Kind: "memfd", FD: int(other.Fd())},
	}
	rep := run(t, e, live, nil)
	for _, name := range []string{"a", "b", "c"} {
		if hs := holders(rep.Entries, name); len(hs) != 1 || hs[pid].FD != 3 {
			t.Errorf("%s: holders %+v, want pid %d at fd 3", name, hs, pid)
		}
	}
	if hs := holders(rep.Entries, "other"); len(hs) != 1 || hs[otherPID].FD != 3 {
		t.Errorf("other: holders %+v, want pid %d at fd 3", hs, otherPID)
	}
	if len(rep.Entries) != 4 || rep.Entries[3].Name != "other" {
		t.Errorf("entries not in the Items' order: %+v", rep.Entries)
	}
}

// An Item whose fd the agent cannot read is reported without holders, and
// the log says so.
func TestRunUnreadableOwnCopy(t *testing.T) {
	e, log := env(t)
	rep := run(t, e, []Item{{Owner: "o", Name: "gone", Kind: "memfd", FD: 1 << 20}}, nil)
	if len(rep.Entries) != 1 || len(rep.Entries[0].Holders) != 0 {
		t.Errorf("entries %+v", rep.Entries)
	}
	if !strings.Contains(log.String(), "audit cannot read its own copy of an entry") || !strings.Contains(log.String(), "name=gone") {
		t.Errorf("log %q", log.String())
	}
}

// A holder of another uid is exposed: dumpable, reachable through
// /proc/PID/fd/N by its uid; a root holder is not.
func TestRunExposure(t *testing.T) {
	testutil.RequireRoot(t)
	e, _ := env(t)
	f := memfd(t, "audit-exposure")
	const nobody = 65534
	pid, _ := testutil.Holding(t, nobody, f)
	rootPID, _ := testutil.Holding(t, -1, f)
	rep := run(t, e, []Item{{Name: "m", Kind: "memfd", FD: int(f.Fd())}}, nil)
	hs := holders(rep.Entries, "m")
	if len(hs) != 2 {
		t.Fatalf("holders %+v, want %d and %d", hs, pid, rootPID)
	}
	h := hs[pid]
	if h.UID != nobody || h.Dumpable == nil || !*h.Dumpable || !h.Exposed || len(h.Exposure) < 2 ||
		h.Exposure[0] != fmt.Sprintf("dumpable: any process of uid %d may reopen /proc/%d/fd/N", nobody, pid) {
		t.Errorf("holder of uid %d: %+v", nobody, h)
	}
	r := hs[rootPID]
	if r.UID != 0 || r.Dumpable != nil || r.Exposed || len(r.Exposure) != 1 || !strings.HasPrefix(r.Exposure[0], "uid 0: ") {
		t.Errorf("root holder: %+v", r)
	}
}

// Report renders the report into a sealed memfd whose JSON reads back the
// same.
func TestReport(t *testing.T) {
	e, _ := env(t)
	f := memfd(t, "audit-report")
	testutil.Holding(t, -1, f)
	rep := run(t, e, []Item{{Owner: "o", Name: "m", Kind: "memfd", FD: int(f.Fd())}}, nil)
	fd, err := Report(rep)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(fd)
	seals, err := linux.Seals(fd)
	const all = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if err != nil || seals&all != all {
		t.Fatalf("seals %#x (%v)", seals, err)
	}
	var st unix.Stat_t
	if err := linux.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, st.Size)
	if n, err := unix.Pread(fd, b, 0); err != nil || n != len(b) {
		t.Fatalf("read %d of %d: %v", n, len(b), err)
	}
	want, _ := json.Marshal(rep)
	if !bytes.Equal(b, want) {
		t.Errorf("report %s, want %s", b, want)
	}
	if !bytes.Contains(b, []byte(`"removed":[]`)) {
		t.Errorf("no empty removed list in %s", b)
	}
}

func TestStatusUID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		uid  int
		isOK bool
	}{
		{"Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1002\t1003\nGid:\t0\t0\t0\t0\n", 1000, true},
		{"Uid:\t0\t0\t0\t0", 0, true},
		{"Name:\tx\nUid: 65534 65534 65534 65534\n", 65534, true},
		{"Name:\tx\nGid:\t5\t5\t5\t5\n", 0, false},
		{"Uid:\n", 0, false},
		{"Uid:\tabc\t0\n", 0, false},
		{"", 0, false},
		{"Name:\tUid: 7\nUid:\t8\n", 8, true}, // only a line's start counts
		{"Uid:\t12", 12, true},                // cut short after the field
	} {
		uid, ok := statusUID([]byte(tc.in))
		if ok != tc.isOK || (ok && uid != tc.uid) {
			t.Errorf("statusUID(%q) = %d, %v; want %d, %v", tc.in, uid, ok, tc.uid, tc.isOK)
		}
	}
}

func TestHidesPIDs(t *testing.T) {
	for opts, want := range map[string]bool{
		"rw,nosuid,nodev,noexec,relatime":         false,
		"rw,hidepid=invisible":                    true,
		"rw,relatime,hidepid=noaccess,subset=pid": true,
		"hidepid=ptraceable":                      true,
		"rw,hidepid=2":                            true,
		"rw,hidepid=4":                            true,
		"rw,hidepid=0":                            false,
		"rw,hidepid=1":                            false, // others' /proc/PID stay listed
		"rw,hidepid=off":                          false,
		"rw,gid=10,hidepid=invisible2":            false,
		"":                                        false,
		"rw,nosuid,nodev,noexec,relatime,hidepid=invisible": true,
	} {
		if got := hidesPIDs(opts); got != want {
			t.Errorf("hidesPIDs(%q) = %v, want %v", opts, got, want)
		}
	}
}

// kinds are knowable as the agent names them (linux.FdKind).
func TestStaleCopiesKnowable(t *testing.T) {
	for kind, want := range map[string]bool{
		"memfd": true, "socket": true, "pipe": true, "tmpfile": true,
		"file": false, "dir": false, "chardev": false, "pidfd": false, "eventfd": false, "path": false, "": false,
	} {
		if got := staleCopiesKnowable(kind); got != want {
			t.Errorf("staleCopiesKnowable(%q) = %v, want %v", kind, got, want)
		}
	}
}
