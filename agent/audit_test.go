package agent

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
	"github.com/capd-dev/capd/internal/testutil"
)

// holdersOf returns the pid -> fd of entry name's holders in entries.
func holdersOf(entries []proto.AuditEntry, name string) map[int]int {
	out := map[int]int{}
	for _, e := range entries {
		if e.Name == name {
			for _, h := range e.Holders {
				out[h.PID] = h.FD
			}
		}
	}
	return out
}

func fileFD(t *testing.T, fd int, name string) *os.File {
	t.Helper()
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

// Audit finds copies of every kind of entry, and after a revoke the stale
// copies of those whose inode only copies of the entry can hold: memfds,
// sockets and pipes (on kernel-internal mounts that no mountinfo lists) and
// O_TMPFILE files (on mounts the holder's mountinfo lists). A regular
// file, which anyone may open, a pidfd, whose inode every pidfd of the
// process shares, and an eventfd, whose anonymous inode every eventfd
// shares, report no stale copies: nothing could confirm them.
func TestAuditKinds(t *testing.T) {
	s := startServer(t, policy.Default())
	c, err := client.Dial(s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	mfd, err := linux.MemfdCreate("audit-kinds")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fileFD(t, sp[1], "peer")
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	fileFD(t, p[1], "pipe-w")
	// A pidfd of a process of its own: every pidfd of a process is on its
	// pidfs inode (go test holds one of this process).
	target, _ := testutil.Holding(t, -1)
	pidfd, err := linux.PidfdOpen(target)
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := unix.Open(t.TempDir(), unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := os.Create(t.TempDir() + "/plain")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	kinds := []struct {
		name  string
		f     *os.File
		stale bool // a stale copy is reported after the revoke
	}{
		{"memfd", fileFD(t, mfd, "memfd"), true},
		{"socket", fileFD(t, sp[0], "socket"), true},
		{"pipe", fileFD(t, p[0], "pipe"), true},
		{"pidfd", fileFD(t, pidfd, "pidfd"), false}, // every pidfd of the process shares the inode
		{"tmpfile", fileFD(t, tmp, "tmpfile"), true},
		{"file", plain, false}, // anyone may open the same file
		{"eventfd", fileFD(t, ev, "eventfd"), false},
	}
	var files []*os.File
	for _, k := range kinds {
		if err := c.Publish(k.name, k.f, nil); err != nil {
			t.Fatalf("publish %s: %v", k.name, err)
		}
		files = append(files, k.f)
	}
	pid, _ := testutil.Holding(t, -1, files...)

	rep, err := c.Audit()
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range kinds {
		// The agent is this process: it is not among the holders.
		if h := holdersOf(rep.Entries, k.name); len(h) != 1 || h[pid] != 3+i {
			t.Errorf("%s: holders %v, want %d at fd %d", k.name, h, pid, 3+i)
		}
	}
	for _, k := range kinds {
		if err := c.Revoke(k.name); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err = c.Audit(); err != nil {
		t.Fatal(err)
	}
	if len(rep.Entries) != 0 {
		t.Errorf("entries left after revoking all: %+v", rep.Entries)
	}
	for i, k := range kinds {
		h := holdersOf(rep.Removed, k.name)
		switch {
		case k.stale && (len(h) != 1 || h[pid] != 3+i):
			t.Errorf("%s: stale holders %v, want %d at fd %d", k.name, h, pid, 3+i)
		case !k.stale && len(h) != 0:
			t.Errorf("%s: stale holders %v, want none", k.name, h)
		}
	}
}

// The agent's own copy of an entry is on a FUSE mount whose server has
// stopped, and so is another process's: audit reads both through /proc
// (never stat), so it answers and finds the copy.
func TestAuditOwnCopyOnStoppedFUSE(t *testing.T) {
	s := startServer(t, policy.Default())
	fuse := testutil.MountFUSE(t) // its cleanup, before the server's, lets the agent's close end
	c, err := client.Dial(s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := os.Open(fuse.Create(t, "f", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Publish("on-fuse", f, nil); err != nil {
		t.Fatal(err)
	}
	pid, stop := testutil.Holding(t, -1, f)
	f.Close() // with the server running
	fuse.Stop(t)
	defer func() {
		fuse.Resume(t) // the holder's exit closes its FUSE file
		stop()
	}()
	done := make(chan error, 1)
	var rep *proto.AuditReport
	go func() {
		var err error
		rep, err = c.Audit()
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		fuse.Resume(t)
		<-done
		t.Fatal("audit did not answer within 10s with its own copy of an entry on a stopped FUSE mount")
	}
	if h := holdersOf(rep.Entries, "on-fuse"); len(h) != 1 || h[pid] != 3 {
		t.Errorf("holders %v, want %d at fd 3", h, pid)
	}
}
