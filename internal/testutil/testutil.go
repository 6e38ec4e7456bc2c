// Package testutil holds what capd's tests share: an fd- and
// goroutine-leak check for TestMain (LeakCheck), real cgroup v2
// directories to run processes in, building and starting the real capd
// binary, and a FUSE mount whose server a test can stop (MountFUSE). It is
// imported only by tests.
//
// Fd ownership: a Cgroup owns one directory fd (for CLONE_INTO_CGROUP),
// closed by its cleanup. A FUSE owns its server process and mount, ended by
// its cleanup; the fds OpenFD returns are the caller's.
package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
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
	Path string // relative to the v2 root, e.g. /capdtest_123_TestX.slice/zincati.service
	Dir  string // absolute directory
	FD   int    // O_PATH directory fd for SysProcAttr.CgroupFD

	mount  string
	killed bool // cgroup.kill was used: see Command
}

// NewCgroup creates rel (e.g. "rpm-ostreed.service") below a slice unique to
// this test, so that its identity is the unit name; the cgroup is emptied
// (cgroup.kill) and removed when the test ends. The slice is a top-level
// one as systemd names them (no '-', which would imply a parent slice), so
// that the path is systemd-shaped (see cgroup.Owner).
func NewCgroup(t testing.TB, rel string) *Cgroup {
	t.Helper()
	mount, err := cgroup.V2Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	slice := fmt.Sprintf("/capdtest_%d_%s.slice", os.Getpid(), sanitize(t.Name()))
	p := filepath.Join(slice, rel)
	if unit, _, _ := strings.Cut(rel, "/"); strings.HasSuffix(unit, ".service") || strings.HasSuffix(unit, ".scope") {
		if id := cgroup.IdentityFromPath(p); id != unit {
			t.Fatalf("test cgroup %s has identity %s, not %s: the harness slice is not systemd-shaped", p, id, unit)
		}
	}
	dir := filepath.Join(mount, p)
	if _, err := cgroup2.NewManager(mount, p, &cgroup2.Resources{}); err != nil {
		t.Fatalf("create cgroup %s: %v", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", dir, err)
	}
	cg := &Cgroup{Path: p, Dir: dir, FD: fd, mount: mount}
	t.Cleanup(func() {
		unix.Close(cg.FD)
		removeTree(filepath.Join(mount, slice))
	})
	return cg
}

// manager loads cg through containerd/cgroups.
func (cg *Cgroup) manager(t testing.TB) *cgroup2.Manager {
	t.Helper()
	m, err := cgroup2.Load(cg.Path, cgroup2.WithMountpoint(cg.mount))
	if err != nil {
		t.Fatalf("load cgroup %s: %v", cg.Path, err)
	}
	return m
}

// KillAsync sends SIGKILL to every process in cg and below (cgroup.kill,
// through containerd/cgroups) without waiting for them to exit.
func (cg *Cgroup) KillAsync(t testing.TB) {
	t.Helper()
	if err := cg.manager(t).Kill(); err != nil {
		t.Fatalf("kill cgroup %s: %v", cg.Path, err)
	}
	cg.killed = true
}

// Kill is KillAsync, then waits until the cgroup is empty.
func (cg *Cgroup) Kill(t testing.TB) {
	t.Helper()
	cg.KillAsync(t)
	m := cg.manager(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := m.Procs(true)
		if err != nil {
			t.Fatalf("procs of %s: %v", cg.Path, err)
		}
		populated, err := cgroup.Populated(cg.Dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 && !populated {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cgroup %s still has processes %v 10s after cgroup.kill", cg.Path, pids)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Recreate kills cg's processes, removes the cgroup and creates a new one
// at the same path, as systemd does when a service restarts.
func (cg *Cgroup) Recreate(t testing.TB) {
	t.Helper()
	cg.Kill(t)
	unix.Close(cg.FD)
	if err := removeTree(cg.Dir); err != nil {
		t.Fatalf("remove cgroup %s: %v", cg.Path, err)
	}
	if _, err := cgroup2.NewManager(cg.mount, cg.Path, &cgroup2.Resources{}); err != nil {
		t.Fatalf("recreate cgroup %s: %v", cg.Path, err)
	}
	fd, err := unix.Open(cg.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", cg.Dir, err)
	}
	cg.FD = fd
	cg.killed = false
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
func removeTree(dir string) error {
	os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var err error
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; try < 100; try++ {
			if err = unix.Rmdir(dirs[i]); err == nil || !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("rmdir %s: %w", dirs[i], err)
		}
	}
	return nil
}

// Command returns cmd set up to start directly inside cg (clone3 with
// CLONE_INTO_CGROUP), so it never runs anywhere else.
//
// Once cg.Kill has run, Linux 6.18 SIGKILLs every process cloned into the
// cgroup with CLONE_INTO_CGROUP (its fork-time kill sequence is read from
// the parent's cgroup, not the target's). After a Kill the command is
// therefore started through sh, which moves itself into the cgroup through
// cgroup.procs and then execs name.
func (cg *Cgroup) Command(name string, args ...string) *exec.Cmd {
	if cg.killed {
		return exec.Command("/bin/sh", append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg.Dir, name}, args...)...)
	}
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.FD}
	return cmd
}

// BuildCapd builds ./cmd/capd and, beside it, ./cmd/capd-full (which capd
// executes for every command it does not run itself) into dir and returns
// capd's path. root is the module root.
func BuildCapd(root, dir string) (string, error) {
	if _, err := Build(root, dir, "./cmd/capd-full"); err != nil {
		return "", err
	}
	return Build(root, dir, "./cmd/capd")
}

// Build builds the command in package pkg (relative to the module root)
// statically into dir and returns the binary's path.
func Build(root, dir, pkg string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return out, nil
}

// Agent is a running capd agent process.
type Agent struct {
	Socket string
	Config string
	Cmd    *exec.Cmd
	Log    *LogBuffer
}

// LogBuffer collects a process's output; safe to read while it is written.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// WaitLog waits up to 10 s for the agent's log to contain substr more than
// n times, and returns the new count.
func (a *Agent) WaitLog(t testing.TB, substr string, n int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c := strings.Count(a.Log.String(), substr); c > n {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent log has no new %q after 10s:\n%s", substr, a.Log)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Reload writes config and sends the agent SIGHUP.
func (a *Agent) Reload(t testing.TB, config string) {
	t.Helper()
	if err := os.WriteFile(a.Config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Cmd.Process.Signal(unix.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// StartAgent runs "capd agent" with config (TOML text) on a fresh socket in
// a short temp dir and stops it when the test ends.
func StartAgent(t testing.TB, capd, config string) *Agent {
	t.Helper()
	return startAgent(t, capd, config, "s")
}

// StartAgentAlone is StartAgent with the socket alone in a directory of
// its own (DIR/a/s), as a directory bound into containers must be.
func StartAgentAlone(t testing.TB, capd, config string) *Agent {
	t.Helper()
	return startAgent(t, capd, config, "a/s")
}

func startAgent(t testing.TB, capd, config, sock string) *Agent {
	t.Helper()
	dir, err := os.MkdirTemp("", "capd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // reachable for tests that run clients as other uids
	a := &Agent{Socket: filepath.Join(dir, sock), Config: filepath.Join(dir, "capd.toml"), Log: &LogBuffer{}}
	if err := os.WriteFile(a.Config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return a.start(t, capd)
}

// RestartAgent starts a new agent with the configuration and socket path
// of old, which must have exited, and stops it when the test ends.
func RestartAgent(t testing.TB, capd string, old *Agent) *Agent {
	t.Helper()
	a := &Agent{Socket: old.Socket, Config: old.Config, Log: &LogBuffer{}}
	return a.start(t, capd)
}

func (a *Agent) start(t testing.TB, capd string) *Agent {
	t.Helper()
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
// running service) until the test ends or cg is killed. The sleep is reaped
// as soon as it dies.
func (cg *Cgroup) Keep(t testing.TB) {
	t.Helper()
	cmd := cg.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start keeper in %s: %v", cg.Path, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	// Started through sh (see Command), the keeper moves itself: wait
	// until it is in, so that the cgroup is populated when Keep returns.
	for deadline := time.Now().Add(5 * time.Second); cg.killed; {
		b, _ := os.ReadFile(filepath.Join(cg.Dir, "cgroup.procs"))
		if strings.Contains("\n"+string(b), "\n"+strconv.Itoa(cmd.Process.Pid)+"\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keeper %d did not enter %s within 5s", cmd.Process.Pid, cg.Path)
		}
		time.Sleep(time.Millisecond)
	}
}
