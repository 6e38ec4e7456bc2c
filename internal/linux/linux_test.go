package linux_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv("CAPD_TEST_EXEC_UNDER_GC") != "" {
		execUnderGC()
	}
	os.Exit(testutil.LeakCheck(m))
}

// TestFdKind classifies real fds; O_PATH fds are "path" whatever they name,
// as fstat alone would call them "file" or "dir".
func TestFdKind(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(path string, flags int) func() (int, error) {
		return func() (int, error) { return unix.Open(path, flags|unix.O_CLOEXEC, 0) }
	}
	for _, tc := range []struct {
		name string
		open func() (int, error)
		want string
	}{
		{"dir", open(dir, unix.O_RDONLY|unix.O_DIRECTORY), "dir"},
		{"O_PATH file", open(file, unix.O_PATH), "path"},
		{"O_PATH dir", open(dir, unix.O_PATH|unix.O_DIRECTORY), "path"},
		{"memfd", func() (int, error) { return linux.MemfdCreate("capd-test") }, "memfd"},
		{"memfd without sealing", func() (int, error) { return unix.MemfdCreate("capd-test", unix.MFD_CLOEXEC) }, "memfd"},
		{"regular file", open(file, unix.O_RDWR), "file"},
		{"tmpfile", open(dir, unix.O_TMPFILE|unix.O_RDWR), "tmpfile"},
		{"pipe", func() (int, error) {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				return -1, err
			}
			unix.Close(p[1])
			return p[0], nil
		}, "pipe"},
		{"socket", func() (int, error) { return unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0) }, "socket"},
	} {
		fd, err := tc.open()
		if err != nil {
			t.Fatalf("%s: open: %v", tc.name, err)
		}
		if got := linux.FdKind(fd); got != tc.want {
			t.Errorf("FdKind(%s) = %q, want %q", tc.name, got, tc.want)
		}
		kind, dev, ino, err := linux.DescribeFD(fd)
		fdev, fino, ferr := linux.FileID(fd)
		if kind != tc.want || dev != fdev || ino != fino || err != nil || ferr != nil {
			t.Errorf("DescribeFD(%s) = %q, %d, %d, %v; want %q and FileID's %d, %d, %v", tc.name, kind, dev, ino, err, tc.want, fdev, fino, ferr)
		}
		unix.Close(fd)
	}
	if got := linux.FdKind(-1); got != "unknown" {
		t.Errorf("FdKind(-1) = %q, want unknown", got)
	}
	if kind, _, _, err := linux.DescribeFD(-1); kind != "unknown" || !errors.Is(err, unix.EBADF) {
		t.Errorf("DescribeFD(-1) = %q, %v; want unknown, EBADF", kind, err)
	}
}

// KernelMounts knows the mount and device of every kind of file that lives
// on a kernel-internal mount, and so of any other file of that kind.
func TestKernelMounts(t *testing.T) {
	m, err := linux.KernelMounts()
	if err != nil {
		t.Fatal(err)
	}
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	mfd, err := linux.MemfdCreate("other")
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	pidfd, err := linux.PidfdOpen(1)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	for what, fd := range map[string]int{"socket": sock, "memfd": mfd, "pipe": p[1], "pidfd": pidfd} {
		var st unix.Statx_t
		if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st); err != nil {
			t.Fatal(err)
		}
		dev, ok := m[int(st.Mnt_id)]
		if !ok || dev != unix.Mkdev(st.Dev_major, st.Dev_minor) {
			t.Errorf("%s on mount %d (device %d:%d): KernelMounts has %x, %v (%v)", what, st.Mnt_id, st.Dev_major, st.Dev_minor, dev, ok, m)
		}
	}
}
