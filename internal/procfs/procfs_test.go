package procfs

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

func self(t *testing.T) Dir {
	t.Helper()
	d, err := Open(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func fdTable(t *testing.T, d Dir) FDTable {
	t.Helper()
	ft, err := d.FDTable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ft.Close() })
	return ft
}

func statx(t *testing.T, fd int) unix.Statx_t {
	t.Helper()
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_INO|unix.STATX_MNT_ID, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mask&unix.STATX_MNT_ID == 0 {
		t.Fatal("statx gave no mount id: kernel too old for these tests")
	}
	return st
}

// Each kind of fd is classified, and its key (link inode, or fdinfo's mount
// and inode) is what statx says.
func TestLinkFDInfo(t *testing.T) {
	d := self(t)
	ft := fdTable(t, d)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ev)
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	ns, err := unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ns)
	path := filepath.Join(t.TempDir(), "f")
	file, err := unix.Open(path, unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(file)

	buf := make([]byte, 4096)
	for _, tc := range []struct {
		fd   int
		kind Kind
		typ  string
	}{
		{p[0], Pseudo, "pipe"}, {sock, Pseudo, "socket"}, {ns, Pseudo, "net"},
		{ev, Anon, ""}, {pidfd, Pidfd, ""}, {file, Path, ""},
	} {
		link, err := ft.Link(tc.fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		kind, typ, ino := Classify(link)
		st := statx(t, tc.fd)
		if kind != tc.kind || string(typ) != tc.typ {
			t.Errorf("%q: kind %d type %q, want %d %q", link, kind, typ, tc.kind, tc.typ)
		}
		if kind == Pseudo && ino != st.Ino {
			t.Errorf("%q: inode %d, statx says %d", link, ino, st.Ino)
		}
		if kind == Path && string(link) != path {
			t.Errorf("link %q, want %q", link, path)
		}
		if kind == Anon {
			continue // never read their fdinfo
		}
		fi, err := d.FDInfo(tc.fd, make([]byte, 256))
		if err != nil {
			t.Fatalf("%q: %v", link, err)
		}
		if fi.MntID != int(st.Mnt_id) || fi.Ino != st.Ino {
			t.Errorf("%q: fdinfo mount %d inode %d, statx says %d %d", link, fi.MntID, fi.Ino, st.Mnt_id, st.Ino)
		}
		if fi.Flags&unix.O_CLOEXEC == 0 {
			t.Errorf("%q: fdinfo flags %o lack O_CLOEXEC", link, fi.Flags)
		}
	}

	fds, err := ft.List(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range []int{p[0], p[1], sock, ev, pidfd, ns, file} {
		if !slices.Contains(fds, fd) {
			t.Errorf("FDs %v lacks %d", fds, fd)
		}
	}
	pids, err := PIDs(nil, make([]byte, 1024))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pids, os.Getpid()) || !slices.Contains(pids, 1) {
		t.Errorf("PIDs has neither this process nor 1: %d pids", len(pids))
	}
}

// mountinfo maps a file's mount id to the device stat reports for it.
func TestMountinfo(t *testing.T) {
	d := self(t)
	b, err := d.ReadFile("mountinfo", make([]byte, 0, 16)) // grows
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "f")
	fd, err := unix.Open(path, unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	st := statx(t, fd)
	var found bool
	for _, m := range ParseMountinfo(b) {
		if m.ID == int(st.Mnt_id) {
			found = true
			if m.Dev != unix.Mkdev(st.Dev_major, st.Dev_minor) {
				t.Errorf("mount %d: device %x, statx says %d:%d", m.ID, m.Dev, st.Dev_major, st.Dev_minor)
			}
		}
	}
	if !found {
		t.Fatalf("mount %d of %s not in mountinfo", st.Mnt_id, path)
	}
	if _, err := d.Readlink("ns/mnt"); err != nil {
		t.Fatal(err)
	}
	if uid, err := d.Owner(); err != nil || uid != uint32(os.Getuid()) {
		t.Errorf("owner %d, %v", uid, err)
	}
}

func TestParse(t *testing.T) {
	fi, err := parseFDInfo([]byte("pos:\t12\nflags:\t02100002\nmnt_id:\t27\nino:\t737\nlock:\t1: FLOCK\n"))
	if err != nil || fi != (FDInfo{Pos: 12, Flags: 0o2100002, MntID: 27, Ino: 737}) {
		t.Errorf("parseFDInfo = %+v, %v", fi, err)
	}
	if _, err := parseFDInfo([]byte("pos:\t0\nflags:\t0\n")); err != ErrNoFileID {
		t.Errorf("fdinfo without ino: %v", err)
	}
	ms := ParseMountinfo([]byte("36 35 98:0 /mnt1 /mnt\\0402 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n" +
		"garbage\n" +
		"22 27 0:21 / /proc rw,relatime - proc proc rw,hidepid=invisible\n"))
	if len(ms) != 2 {
		t.Fatalf("ParseMountinfo = %+v", ms)
	}
	if m := ms[0]; m.ID != 36 || m.Dev != unix.Mkdev(98, 0) || m.Point != `/mnt\0402` || m.Options != "rw,noatime" || m.FSType != "ext3" || m.Super != "rw,errors=continue" {
		t.Errorf("mount = %+v", m)
	}
	if m := ms[1]; m.ID != 22 || m.Dev != unix.Mkdev(0, 21) || m.Super != "rw,hidepid=invisible" {
		t.Errorf("mount = %+v", m)
	}
	for link, want := range map[string]Kind{
		"/x (deleted)": Path, "socket:[1]": Pseudo, "anon_inode:[eventpoll]": Anon, "anon_inode:inotify": Anon,
		"anon_inode:[pidfd]": Pidfd, "socket:[]": Other, "socket:[x]": Other, ":[1]": Other, "": Other,
	} {
		if k, _, _ := Classify([]byte(link)); k != want {
			t.Errorf("Classify(%q) = %d, want %d", link, k, want)
		}
	}
}

// returns fails the test if fn has not returned within d.
func returns(t *testing.T, what string, d time.Duration, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s still waits after %v on a stopped FUSE server: it calls into the file's file system", what, d)
	}
}

// Nothing Dir reads asks the file system of the file: with the FUSE server
// stopped, a stat through the magic link waits, but listing, the link and
// fdinfo answer at once; so does the link of an epoll fd whose instance is
// locked by a thread stuck in epoll_ctl on the FUSE file.
func TestStoppedFUSE(t *testing.T) {
	f := testutil.MountFUSE(t)
	f.Create(t, "f", "x")
	fd := f.OpenFD(t, "f")
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	d := self(t)
	ft := fdTable(t, d)
	f.Stop(t)
	stat := make(chan error, 1)
	go func() {
		var st unix.Stat_t
		stat <- unix.Stat("/proc/self/fd/"+strconv.Itoa(fd), &st)
	}()
	ctl := make(chan error, 1)
	go func() {
		ctl <- unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN})
	}()
	defer func() {
		// Let the waiting calls end before the fds go.
		f.Resume(t)
		<-stat
		<-ctl
		unix.Close(ep)
		unix.Close(fd)
	}()
	select {
	case err := <-stat:
		stat <- err // for the deferred wait
		t.Fatalf("stat through the magic link returned (%v) with the server stopped: the mount is not stuck, the test proves nothing", err)
	case <-time.After(300 * time.Millisecond):
	}
	select {
	case err := <-ctl:
		ctl <- err
		t.Fatalf("epoll_ctl of the FUSE file returned (%v) with the server stopped: FUSE_POLL was not sent", err)
	default:
	}
	returns(t, "List, Link and FDInfo", 5*time.Second, func() {
		buf := make([]byte, 4096)
		fds, err := ft.List(nil, buf)
		if err != nil || !slices.Contains(fds, fd) {
			t.Errorf("List = %v, %v", fds, err)
		}
		link, err := ft.Link(fd, buf)
		if k, _, _ := Classify(link); err != nil || k != Path {
			t.Errorf("Link = %q, %v", link, err)
		}
		fi, err := d.FDInfo(fd, make([]byte, 256))
		if err != nil || fi.Ino == 0 {
			t.Errorf("FDInfo = %+v, %v", fi, err)
		}
		link, err = ft.Link(ep, buf)
		if k, _, _ := Classify(link); err != nil || k != Anon {
			t.Errorf("epoll Link = %q, %v", link, err)
		}
	})
}

// A Dir and its FDTable stay bound to their process: after it has exited
// and been reaped, Alive says so and the fd table reads nothing, whatever
// now has its pid.
func TestBoundToProcess(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pid, stop := testutil.Holding(t, -1, f)
	d, err := Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ft := fdTable(t, d)
	if alive, err := d.Alive(); err != nil || !alive {
		t.Fatalf("Alive = %v, %v for a running process", alive, err)
	}
	buf := make([]byte, 4096)
	if link, err := ft.Link(3, buf); err != nil || string(link) != os.DevNull {
		t.Fatalf("Link(3) = %q, %v", link, err)
	}
	stop()
	if alive, err := d.Alive(); err != nil || alive {
		t.Errorf("Alive = %v, %v after the process was reaped", alive, err)
	}
	if link, err := ft.Link(3, buf); err == nil {
		t.Errorf("Link(3) = %q after the process was reaped", link)
	}
	if fds, err := ft.List(nil, buf); err == nil && len(fds) > 0 {
		t.Errorf("List = %v after the process was reaped", fds)
	}
}
