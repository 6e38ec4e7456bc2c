package testutil

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FUSE is a FUSE mount whose server a test can stop, so that the kernel's
// requests to it wait: close(2) of a file on it (FUSE_FLUSH, which the
// kernel waits for uninterruptibly), and stat (FUSE_GETATTR: the mount has
// no attribute cache). The server is disorderfs (Debian package disorderfs),
// a pass-through of a private directory that answers FUSE_FLUSH (bindfs
// and fuse-overlayfs do not: after their first ENOSYS the kernel stops
// sending it, and close never waits again).
//
// Cleanup, registered by MountFUSE, resumes and kills the server (ending
// every request still waiting), lazily unmounts and removes the
// directories, so nothing is left hanging whatever the test did. If the
// test binary dies instead, the server dies with it (PR_SET_PDEATHSIG) and
// fusermount unmounts (auto_unmount).
type FUSE struct {
	Dir    string // the mount point
	Source string // the directory it mirrors
	cmd    *exec.Cmd
	done   chan struct{}
}

// MountFUSE mounts a fresh disorderfs over a private directory, or fails
// the test saying what to install.
func MountFUSE(t testing.TB) *FUSE {
	t.Helper()
	RequireRoot(t)
	bin, err := exec.LookPath("disorderfs")
	if err != nil {
		t.Fatal("this test needs a FUSE server that can be stopped: install disorderfs (scripts/install-test-deps.sh, or apt-get install disorderfs)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("this test needs /dev/fuse (modprobe fuse): %v", err)
	}
	base, err := os.MkdirTemp("", "capd-fuse")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	f := &FUSE{Dir: filepath.Join(base, "mnt"), Source: filepath.Join(base, "src"), done: make(chan struct{})}
	for _, d := range []string{f.Dir, f.Source} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	log := &LogBuffer{}
	f.cmd = exec.Command(bin, "-f", "-q", "--reverse-dirents=no", "--pad-blocks=0",
		"-o", "allow_other,auto_unmount,attr_timeout=0,entry_timeout=0,negative_timeout=0", f.Source, f.Dir)
	f.cmd.Stdout, f.cmd.Stderr = log, log
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := f.cmd.Start(); err != nil {
		os.RemoveAll(base)
		t.Fatalf("start disorderfs: %v", err)
	}
	go func() { f.cmd.Wait(); close(f.done) }()
	t.Cleanup(func() {
		f.cmd.Process.Signal(syscall.SIGCONT)
		f.cmd.Process.Kill()
		<-f.done
		// The kernel aborted the connection with the server's /dev/fuse
		// fd; detach what is left of the mount.
		if err := unix.Unmount(f.Dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			t.Errorf("unmount %s: %v", f.Dir, err)
		}
		os.RemoveAll(base)
	})
	for deadline := time.Now().Add(10 * time.Second); !f.mounted(); time.Sleep(5 * time.Millisecond) {
		select {
		case <-f.done:
			t.Fatalf("disorderfs exited before mounting %s: %s", f.Dir, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("disorderfs did not mount %s within 10s: %s", f.Dir, log)
		}
	}
	return f
}

// mounted reports whether a fuse.disorderfs mount is on f.Dir.
func (f *FUSE) mounted() bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		fields := strings.Fields(l)
		if len(fields) > 4 && fields[4] == f.Dir && strings.Contains(l, " - fuse.disorderfs ") {
			return true
		}
	}
	return false
}

// Pid is the server's pid.
func (f *FUSE) Pid() int { return f.cmd.Process.Pid }

// Create writes a file into the mirrored directory and returns its path on
// the mount.
func (f *FUSE) Create(t testing.TB, name, content string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.Source, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(f.Dir, name)
}

// OpenFD opens name on the mount (the server must be running) and returns
// the raw fd (O_CLOEXEC), which the caller owns. Closing it while the
// server is stopped waits until it runs again or dies.
func (f *FUSE) OpenFD(t testing.TB, name string) int {
	t.Helper()
	fd, err := unix.Open(filepath.Join(f.Dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s on the FUSE mount: %v", name, err)
	}
	return fd
}

// Stop stops the server (SIGSTOP) and waits until every one of its threads
// has stopped, so that from then on no request is answered.
func (f *FUSE) Stop(t testing.TB) {
	t.Helper()
	if err := f.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("stop the FUSE server: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); !f.stopped(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the FUSE server's threads did not all stop within 5s")
		}
	}
}

// stopped reports whether every thread of the server is in a stop state.
func (f *FUSE) stopped() bool {
	task := "/proc/" + strconv.Itoa(f.Pid()) + "/task"
	ents, err := os.ReadDir(task)
	if err != nil || len(ents) == 0 {
		return false
	}
	for _, e := range ents {
		b, err := os.ReadFile(task + "/" + e.Name() + "/stat")
		if err != nil {
			return false
		}
		// "TID (COMM) STATE ...": COMM may hold anything but ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
			return false
		}
	}
	return true
}

// Resume lets the server answer again (SIGCONT).
func (f *FUSE) Resume(t testing.TB) {
	t.Helper()
	if err := f.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("resume the FUSE server: %v", err)
	}
}
