// Package testutil holds what capd's tests share: an fd-leak check for
// TestMain, real cgroup v2 directories to run processes in, and building and
// starting the real capd binary. It is imported only by tests.
//
// Fd ownership: a Cgroup owns one directory fd (for CLONE_INTO_CGROUP),
// closed by its cleanup.
package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
)

// FDs lists the open fds of the current process with their targets.
func FDs() map[int]string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		panic(err)
	}
	out := make(map[int]string, len(ents))
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		t, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the fd ReadDir itself used
		}
		out[n] = t
	}
	return out
}

// CountFDs counts the open fds of pid.
func CountFDs(pid int) (int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// LeakCheck runs m and fails the binary if it leaves fds open that were not
// open before. Use it as TestMain: os.Exit(testutil.LeakCheck(m)).
func LeakCheck(m *testing.M) int {
	before := FDs()
	code := m.Run()
	var leaked []string
	// Finalizers of dropped *os.Files may still be pending.
	for try := 0; try < 20; try++ {
		runtime.GC()
		leaked = leaked[:0]
		for fd, t := range FDs() {
			if _, ok := before[fd]; !ok && !strings.HasPrefix(t, "anon_inode:[eventpoll]") && !strings.HasPrefix(t, "anon_inode:[eventfd]") && !strings.HasPrefix(t, "anon_inode:[pidfd]") {
				leaked = append(leaked, fmt.Sprintf("%d -> %s", fd, t))
			}
		}
		if len(leaked) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(leaked) > 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "FAIL: fds leaked by the tests: %s\n", strings.Join(leaked, ", "))
		return 1
	}
	return code
}

// RequireRoot fails the test loudly unless it runs as root with cgroup v2.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (real cgroups, pidfds of other users' processes): run the test suite as root, e.g. 'sudo make check'")
	}
	if _, err := cgroup.V2Mountpoint(); err != nil {
		t.Fatalf("this test needs a cgroup v2 hierarchy: %v", err)
	}
}

// Cgroup is a real cgroup v2 directory created for a test.
type Cgroup struct {
	Path string // relative to the v2 root, e.g. /capdtest-123.slice/zincati.service
	Dir  string // absolute directory
	FD   int    // O_PATH directory fd for SysProcAttr.CgroupFD
}

// NewCgroup creates rel (e.g. "rpm-ostreed.service") below a slice unique to
// this test, so that its identity is the unit name; the cgroup is emptied
// (cgroup.kill) and removed when the test ends.
func NewCgroup(t testing.TB, rel string) *Cgroup {
	t.Helper()
	mount, err := cgroup.V2Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	slice := fmt.Sprintf("/capdtest-%d-%s.slice", os.Getpid(), sanitize(t.Name()))
	p := filepath.Join(slice, rel)
	dir := filepath.Join(mount, p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create cgroup %s: %v", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", dir, err)
	}
	cg := &Cgroup{Path: p, Dir: dir, FD: fd}
	t.Cleanup(func() {
		unix.Close(fd)
		removeTree(filepath.Join(mount, slice))
	})
	return cg
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
}

// removeTree kills every process below dir and removes the cgroups,
// deepest first.
func removeTree(dir string) {
	os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; try < 100; try++ {
			if err := unix.Rmdir(dirs[i]); err == nil || !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Command returns cmd set up to start directly inside cg (clone3 with
// CLONE_INTO_CGROUP), so it never runs anywhere else.
func (cg *Cgroup) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.FD}
	return cmd
}

// BuildCapd builds ./cmd/capd into dir and returns its path. root is the
// module root.
func BuildCapd(root, dir string) (string, error) {
	out := filepath.Join(dir, "capd")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/capd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build capd: %v\n%s", err, b)
	}
	return out, nil
}

// Agent is a running capd agent process.
type Agent struct {
	Socket string
	Config string
	Cmd    *exec.Cmd
	Log    *bytes.Buffer
}

// StartAgent runs "capd agent" with config (TOML text) on a fresh socket in
// a short temp dir and stops it when the test ends.
func StartAgent(t testing.TB, capd, config string) *Agent {
	t.Helper()
	dir, err := os.MkdirTemp("", "capd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // reachable for tests that run clients as other uids
	a := &Agent{Socket: filepath.Join(dir, "s"), Config: filepath.Join(dir, "capd.toml"), Log: &bytes.Buffer{}}
	if err := os.WriteFile(a.Config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	a.Cmd = exec.Command(capd, "agent", "--config", a.Config, "--socket", a.Socket, "--log-level", "debug")
	a.Cmd.Stderr = a.Log
	a.Cmd.Stdout = a.Log
	if err := a.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if Connectable(a.Socket) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not accept connections in 10s; log:\n%s", a.Log)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return a
}

// Connectable reports whether something accepts connections on the
// SOCK_SEQPACKET socket at path.
func Connectable(path string) bool {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path}) == nil
}

// Stop ends the agent with SIGTERM and waits for it.
func (a *Agent) Stop() {
	if a.Cmd.ProcessState != nil {
		return
	}
	a.Cmd.Process.Signal(unix.SIGTERM)
	done := make(chan struct{})
	go func() { a.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		a.Cmd.Process.Kill()
		<-done
	}
}

// Env returns os.Environ with CAPD_SOCKET pointing at the agent.
func (a *Agent) Env(extra ...string) []string {
	return append(append(os.Environ(), "CAPD_SOCKET="+a.Socket), extra...)
}

// Keep starts a long sleep inside cg so that the cgroup stays populated (a
// running service) until the test ends.
func (cg *Cgroup) Keep(t testing.TB) {
	t.Helper()
	cmd := cg.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start keeper in %s: %v", cg.Path, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}
