//go:build vmguest

// These tests need a kernel with BPF LSM (bpf in lsm=): they run in the
// QEMU guest of tests/bpflsm_vm_test.go and fail, never skip, elsewhere.

package enforce

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/activation"
)

func init() {
	roles["read-fd3"] = roleReadFD3
	roles["adopt"] = roleAdopt
	roles["ioctl-fd3"] = roleIoctlFD3
}

func mustLoad(t testing.TB) *Enforcer {
	t.Helper()
	e, err := Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func memfd(t testing.TB) int {
	t.Helper()
	fd, err := unix.MemfdCreate("capd-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.Write(fd, []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	return fd
}

func dup(t testing.TB, fd int) int {
	t.Helper()
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(d) })
	return d
}

// dupFile is a dup of fd as an *os.File the caller closes.
func dupFile(t testing.TB, fd int, name string) *os.File {
	t.Helper()
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(d), name)
}

func open(t testing.TB, path string, flags int) int {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func wantErrno(t testing.TB, what string, err, want error) {
	t.Helper()
	if want == nil && err != nil {
		t.Errorf("%s: %v, want success", what, err)
	} else if want != nil && !errors.Is(err, want) {
		t.Errorf("%s: %v, want %v", what, err, want)
	}
}

// Revoke takes the constant-time path (file_ioctl takes the agent's own
// request); an O_PATH fd, which ioctl refuses before any hook, falls back
// to the fd-table walk; and another process's request is not taken: its
// ioctl fails as the file's would (ENOTTY), and nothing is revoked.
func TestRevokeFast(t *testing.T) {
	e := mustLoad(t)
	if !e.Fast() {
		t.Fatal("file_ioctl does not take the agent's revoke request")
	}
	fd := memfd(t)
	other := dup(t, open(t, "/proc/self/fd/"+fmt.Sprint(fd), unix.O_RDWR))
	if err := e.Revoke(fd, 1, 0, false); err != nil {
		t.Fatal(err)
	}
	_, err := unix.Pread(fd, make([]byte, 1), 0)
	wantErrno(t, "pread after a fast revoke", err, unix.EPERM)
	_, err = unix.Pread(other, make([]byte, 1), 0)
	wantErrno(t, "pread of another description", err, nil)
	p := open(t, "/tmp", unix.O_PATH)
	if err := e.Revoke(p, 2, 0, false); err != nil {
		t.Fatalf("Revoke(O_PATH fd): %v", err)
	}
	// Another process sends the request on its own memfd.
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), "CAPD_ENFORCE_ROLE=ioctl-fd3")
	m := dupFile(t, memfd(t), "m")
	defer m.Close()
	cmd.ExtraFiles = []*os.File{m}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "inappropriate ioctl") {
		t.Fatalf("another process's request: %v: %s", err, out)
	}
	_, err = unix.Pread(int(m.Fd()), make([]byte, 1), 0)
	wantErrno(t, "pread of the file another process sent the request on", err, nil)
}

func roleIoctlFD3() int {
	_, err := unix.IoctlRetInt(3, revokeIoctl)
	fmt.Println(err)
	return 0
}

func TestHooks(t *testing.T) {
	e := mustLoad(t)
	var u unix.Utsname
	unix.Uname(&u)
	t.Logf("kernel %s: attached %s; inode marks %v", unix.ByteSliceToString(u.Release[:]), strings.Join(e.Hooks(), " "), e.InodeMarks())
	if !e.InodeMarks() {
		t.Error("no inode marks: file_open or inode_free_security did not attach")
	}
}

func TestRevokeDenies(t *testing.T) {
	e := mustLoad(t)
	agent := memfd(t)
	holder := dup(t, agent)
	other := open(t, fmt.Sprintf("/proc/self/fd/%d", agent), unix.O_RDWR) // another description
	devnull := open(t, "/dev/null", unix.O_RDWR)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	sockHolder := dup(t, sp[0])
	premap, err := unix.Mmap(holder, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(premap)

	if err := e.Revoke(agent, 7, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := e.Revoke(sp[0], 8, 0, false); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	_, err = unix.Read(holder, b)
	wantErrno(t, "read", err, unix.EPERM)
	_, err = unix.Write(holder, b)
	wantErrno(t, "write", err, unix.EPERM)
	_, err = unix.Pread(holder, b, 0)
	wantErrno(t, "pread", err, unix.EPERM)
	_, err = unix.IoctlGetInt(holder, unix.TIOCINQ)
	wantErrno(t, "ioctl FIONREAD", err, unix.EPERM)
	_, err = unix.Mmap(holder, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	wantErrno(t, "mmap", err, unix.EPERM)
	err = unix.Mprotect(premap, unix.PROT_READ|unix.PROT_WRITE)
	wantErrno(t, "mprotect of a mapping made before", err, unix.EPERM)
	err = unix.Ftruncate(holder, 0)
	if e.links["file_truncate"] != nil {
		wantErrno(t, "ftruncate", err, unix.EPERM)
	} else {
		t.Logf("ftruncate without the file_truncate hook (before 6.2): %v", err)
	}

	// Sockets: send and receive on the revoked description.
	err = unix.Sendmsg(sockHolder, []byte("x"), nil, nil, 0)
	wantErrno(t, "sendmsg", err, unix.EPERM)
	if _, err := unix.Write(sp[1], []byte("y")); err != nil {
		t.Fatalf("write on the unrevoked peer: %v", err)
	}
	_, _, _, _, err = unix.Recvmsg(sockHolder, b, nil, 0)
	wantErrno(t, "recvmsg", err, unix.EPERM)

	// Passing it on.
	pass, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pass[0])
	defer unix.Close(pass[1])
	if err := unix.Sendmsg(pass[0], []byte("f"), unix.UnixRights(holder), nil, 0); err != nil {
		t.Fatalf("send the revoked fd: %v", err)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, flags, _, err := unix.Recvmsg(pass[1], b, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("recvmsg of SCM_RIGHTS: %v", err)
	}
	if flags&unix.MSG_CTRUNC == 0 || oobn != 0 {
		t.Errorf("SCM_RIGHTS of a revoked fd arrived: flags %#x, %d control bytes", flags, oobn)
		if msgs, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(msgs) > 0 {
			if fds, _ := unix.ParseUnixRights(&msgs[0]); len(fds) > 0 {
				unix.Close(fds[0])
			}
		}
	}
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	got, err := unix.PidfdGetfd(pidfd, holder, 0)
	if err == nil {
		unix.Close(got)
	}
	wantErrno(t, "pidfd_getfd", err, unix.EPERM)

	// What was not revoked works.
	_, err = unix.Pread(other, b, 0)
	wantErrno(t, "pread on another description of the memfd", err, nil)
	_, err = unix.Pwrite(other, b, 0)
	wantErrno(t, "pwrite on another description of the memfd", err, nil)
	_, err = unix.Read(devnull, b)
	wantErrno(t, "read /dev/null", err, nil)
	_, err = unix.Write(sp[1], []byte("z"))
	wantErrno(t, "write on the socket's peer", err, nil)
	if unix.Sendmsg(pass[0], []byte("f"), unix.UnixRights(other), nil, 0) == nil {
		_, oobn, flags, _, err := unix.Recvmsg(pass[1], b, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil || flags&unix.MSG_CTRUNC != 0 || oobn == 0 {
			t.Errorf("SCM_RIGHTS of an unrevoked fd: %v, flags %#x, %d control bytes", err, flags, oobn)
		} else if msgs, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(msgs) > 0 {
			fds, _ := unix.ParseUnixRights(&msgs[0])
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}

	n, err := e.InForce()
	if err != nil {
		t.Fatal(err)
	}
	if n[7] != 1 || n[8] != 1 || len(n) != 2 {
		t.Errorf("InForce() = %v, want map[7:1 8:1]", n)
	}
	if err := e.Revoke(1<<20, 9, 0, false); !errors.Is(err, ErrNotOpen) {
		t.Errorf("Revoke of a closed fd: %v, want ErrNotOpen", err)
	}
}

// roleReadFD3 reads fd 3; exit 0 when it could, 1 on EPERM.
func roleReadFD3() int {
	_, err := unix.Pread(3, make([]byte, 1), 0)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, unix.EPERM):
		return 1
	}
	fmt.Fprintln(os.Stderr, err)
	return 2
}

func cgroupID(t testing.TB, dir string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestExemptCgroup(t *testing.T) {
	e := mustLoad(t)
	dir := "/sys/fs/cgroup/capd-exempt"
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	cg := open(t, dir, unix.O_PATH|unix.O_DIRECTORY)
	agent := memfd(t)
	if err := e.Revoke(agent, 1, cgroupID(t, dir), false); err != nil {
		t.Fatal(err)
	}
	run := func(inCgroup bool) int {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "CAPD_ENFORCE_ROLE=read-fd3")
		h := dupFile(t, agent, "holder")
		defer h.Close()
		cmd.ExtraFiles = []*os.File{h}
		cmd.Stderr = os.Stderr
		if inCgroup {
			cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: cg}
		}
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return 0
	}
	if c := run(true); c != 0 {
		t.Errorf("child in the exempt cgroup: exit %d, want 0 (read works)", c)
	}
	if c := run(false); c != 1 {
		t.Errorf("child outside the exempt cgroup: exit %d, want 1 (EPERM)", c)
	}
}

// TestFileFreeCleanup: a freed struct file's key goes; files that reuse
// its address are never denied.
func TestFileFreeCleanup(t *testing.T) {
	e := mustLoad(t)
	for i := 0; i < 20; i++ {
		fd, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := unix.Dup(fd)
		if err := e.Revoke(fd, uint64(i), 0, false); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		unix.Close(d)
	}
	for i := 0; i < 5000; i++ {
		fd, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		_, err = unix.Write(fd, []byte("x"))
		unix.Close(fd)
		if err != nil {
			t.Fatalf("write to /dev/null open %d: %v (a reused address was revoked)", i, err)
		}
	}
	if n := e.Len(); n != 0 {
		t.Errorf("Len() = %d after every revoked file was closed, want 0", n)
	}
}

func TestFull(t *testing.T) {
	e, err := load(8)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for i := 0; i < 8; i++ {
		if err := e.Revoke(open(t, "/dev/null", unix.O_RDONLY), uint64(i), 0, false); err != nil {
			t.Fatalf("revoke %d: %v", i, err)
		}
	}
	fd := open(t, "/dev/null", unix.O_RDONLY)
	if err := e.Revoke(fd, 99, 0, false); !errors.Is(err, ErrFull) {
		t.Fatalf("Revoke with the map full: %v, want ErrFull", err)
	}
	if _, err := unix.Read(fd, make([]byte, 1)); err != nil {
		t.Errorf("read of the fd Revoke refused: %v", err)
	}
	if n := e.Len(); n != 8 {
		t.Errorf("Len() = %d, want 8", n)
	}
}

func TestInodeMark(t *testing.T) {
	e := mustLoad(t)
	agent := memfd(t)
	if err := e.Revoke(agent, 3, 0, true); err != nil {
		t.Fatal(err)
	}
	_, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", agent), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	wantErrno(t, "reopen through /proc/self/fd", err, unix.EPERM)
	if n, _ := e.InForce(); n[3] != 2 {
		t.Errorf("InForce()[3] = %d, want 2 (the description and the inode)", n[3])
	}
	unix.Close(agent) // the memfd's last fd: inode freed, key gone
	if n := e.Len(); n != 0 {
		t.Errorf("Len() = %d after the memfd was freed", n)
	}
	other := memfd(t)
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", other), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	wantErrno(t, "reopen an unrevoked memfd", err, nil)
	if err == nil {
		unix.Close(fd)
	}
}

// roleAdopt is a restarted agent: fds 3.. are $CAPD_ENFORCE_NAMES, then
// the holder of a description the old agent revoked.
func roleAdopt() int {
	names := strings.Split(os.Getenv("CAPD_ENFORCE_NAMES"), ",")
	var files []activation.File
	for i, n := range names {
		files = append(files, activation.File{Name: n, FD: 3 + i})
	}
	holder := 3 + len(names)
	fail := func(f string, a ...any) int { fmt.Fprintf(os.Stderr, f+"\n", a...); return 1 }
	e, err := Adopt(files)
	if err != nil {
		return fail("Adopt: %v", err)
	}
	for _, f := range files {
		unix.Close(f.FD) // the adopting agent holds its own dups
	}
	if _, err := unix.Pread(holder, make([]byte, 1), 0); !errors.Is(err, unix.EPERM) {
		return fail("read of the old revocation after Adopt: %v", err)
	}
	mine, err := unix.MemfdCreate("adopted", unix.MFD_CLOEXEC)
	if err != nil {
		return fail("%v", err)
	}
	h, _ := unix.Dup(mine)
	if err := e.Revoke(mine, 42, 0, true); err != nil {
		return fail("Revoke after Adopt: %v", err)
	}
	if _, err := unix.Write(h, []byte("x")); !errors.Is(err, unix.EPERM) {
		return fail("write after the adopter's Revoke: %v", err)
	}
	if n, err := e.InForce(); err != nil || n[42] != 2 || n[5] != 1 {
		return fail("InForce() = %v, %v", n, err)
	}
	e.Close()
	fmt.Println("adopted")
	return 0
}

func TestAdoptAndDeath(t *testing.T) {
	e, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	agent := memfd(t)
	holder := dup(t, agent)
	if err := e.Revoke(agent, 5, 0, false); err != nil {
		t.Fatal(err)
	}
	var names []string
	var extra []*os.File
	for _, f := range e.Files() {
		names = append(names, f.Name)
		extra = append(extra, dupFile(t, f.FD, f.Name))
	}
	extra = append(extra, dupFile(t, holder, "holder"))
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CAPD_ENFORCE_ROLE=adopt", "CAPD_ENFORCE_NAMES="+strings.Join(names, ","))
	cmd.ExtraFiles = extra
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	err = cmd.Start()
	for _, f := range extra {
		f.Close() // the child has them
	}
	if err != nil {
		t.Fatal(err)
	}
	e.Close() // the old agent dies; the child keeps the links
	if err := cmd.Wait(); err != nil {
		t.Fatalf("adopting process: %v", err)
	}
	// The last fd of every link is gone with the child: enforcement lifts.
	if _, err := unix.Pread(holder, make([]byte, 1), 0); err != nil {
		t.Errorf("read after every link fd was closed: %v; want success (revocations die with their links)", err)
	}
}
