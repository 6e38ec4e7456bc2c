package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPathByID resolves a freshly made cgroup from its kernel id, the way the
// agent resolves a peer's cgroup from PIDFD_GET_INFO.
func TestPathByID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestPathByID needs root (open_by_handle_at needs CAP_DAC_READ_SEARCH); run the tests as root")
	}
	r, err := NewResolver()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rel := "/capd-resolve-test.slice"
	dir := r.Abs(rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	got, err := r.PathByID(st.Ino)
	if err != nil {
		t.Fatal(err)
	}
	if got != rel {
		t.Fatalf("PathByID(%d) = %q, want %q", st.Ino, got, rel)
	}
	if err := unix.Stat(r.Abs("/"), &st); err != nil {
		t.Fatal(err)
	}
	if got, err := r.PathByID(st.Ino); err != nil || got != "/" {
		t.Fatalf("PathByID(root) = %q, %v; want /", got, err)
	}
}

func TestRelativeBothLayouts(t *testing.T) {
	for _, tc := range []struct{ mount, abs, want string }{
		{"/sys/fs/cgroup", "/sys/fs/cgroup", "/"},
		{"/sys/fs/cgroup", "/sys/fs/cgroup/system.slice/zincati.service", "/system.slice/zincati.service"},
		{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/system.slice/zincati.service", "/system.slice/zincati.service"},
		{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified", "/"},
	} {
		r := &Resolver{mount: tc.mount}
		got, err := r.relative(tc.abs)
		if err != nil || got != tc.want {
			t.Errorf("relative(%q) on %s = %q, %v; want %q", tc.abs, tc.mount, got, err, tc.want)
		}
		if IdentityFromPath(got) != IdentityFromPath(tc.want) {
			t.Errorf("identity differs across layouts for %q", tc.abs)
		}
	}
	r := &Resolver{mount: "/sys/fs/cgroup/unified"}
	if _, err := r.relative("/sys/fs/cgroup/unifiedX/a"); err == nil {
		t.Error("path outside the mount accepted")
	}
}

// TestProcPathDeletedSuffix: a cgroup named "zincati.service (deleted)"
// reads as that literal path (never as zincati.service: the kernel's
// suffix for removed cgroups is not stripped), and a process left in a
// cgroup that was really removed has no path at all.
func TestProcPathDeletedSuffix(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestProcPathDeletedSuffix needs root (it creates cgroups and moves processes); run the tests as root")
	}
	r, err := NewResolver()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	parent := fmt.Sprintf("/capd_procpath_%d.slice", os.Getpid())
	mkCgroup := func(rel string) int {
		t.Helper()
		if err := os.Mkdir(r.Abs(rel), 0o755); err != nil {
			t.Fatalf("create cgroup: %v", err)
		}
		t.Cleanup(func() { rmdirRetry(r.Abs(rel)) })
		fd, err := unix.Open(r.Abs(rel), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	startIn := func(fd int, name string, args ...string) *exec.Cmd {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s in a cgroup: %v", name, err)
		}
		return cmd
	}
	unix.Close(mkCgroup(parent))

	literal := parent + "/zincati.service (deleted)"
	fd := mkCgroup(literal)
	sleeper := startIn(fd, "sleep", "60")
	unix.Close(fd)
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	for name, procPath := range map[string]func(int) (string, error){"Resolver.ProcPath": r.ProcPath, "ProcPath": ProcPath} {
		got, err := procPath(sleeper.Process.Pid)
		if err != nil || got != literal {
			t.Errorf("%s in %q = %q, %v; want the literal path", name, literal, got, err)
		}
		if id := IdentityFromPath(got); id != "cgroup:"+literal {
			t.Errorf("%s in %q: identity %q, want cgroup:%s", name, literal, id, literal)
		}
	}

	// A zombie keeps its cgroup, which can then be removed: the kernel
	// shows "PATH (deleted)" and no cgroup of that name exists.
	gone := parent + "/gone.service"
	fd = mkCgroup(gone)
	exited := startIn(fd, "true")
	unix.Close(fd)
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, exited.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatalf("waitid: %v", err)
	}
	defer exited.Wait()
	if err := rmdirRetry(r.Abs(gone)); err != nil {
		t.Fatalf("remove the zombie's cgroup: %v", err)
	}
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", exited.Process.Pid)); !strings.Contains("\n"+string(b), "\n0::"+gone+" (deleted)\n") {
		t.Fatalf("the kernel does not mark the zombie's removed cgroup (deleted):\n%s", b)
	}
	for name, procPath := range map[string]func(int) (string, error){"Resolver.ProcPath": r.ProcPath, "ProcPath": ProcPath} {
		if got, err := procPath(exited.Process.Pid); !errors.Is(err, ErrCgroupRemoved) {
			t.Errorf("%s of a process in removed %s = %q, %v; want ErrCgroupRemoved", name, gone, got, err)
		}
	}
}

// rmdirRetry removes a cgroup directory, waiting out EBUSY while its last
// process is being released.
func rmdirRetry(dir string) error {
	var err error
	for try := 0; try < 100; try++ {
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}
