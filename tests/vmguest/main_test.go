//go:build vmguest

package vmguest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

// Guest paths: tests/vm_e2e_test.go puts the binaries in /bin.
const (
	capd     = "/bin/capd-full"
	fdsupBin = "/bin/fdsup"
	cgRoot   = "/sys/fs/cgroup"
	sock     = "/tmp/capd.sock"
	notify   = "/tmp/fdsup.notify"
	config   = "/tmp/capd.toml"
	agentLog = "/tmp/agent.log"
)

// policy: /a and /b acquire what /pub publishes (and /a what /own does),
// /a may delegate to /c (which has no grant of its own).
const policy = `
[[grant]]
consumer    = "cgroup:/a"
acquire     = ["cgroup:/pub:*", "cgroup:/own:*"]
delegate_to = ["cgroup:/c"]

[[grant]]
consumer = "cgroup:/b"
acquire  = ["cgroup:/pub:*"]
`

// roleEnv names the helper role the test binary runs as when re-executed.
const roleEnv = "CAPD_VMGUEST_ROLE"

// sup is fdsup running the agent; its event lines are kept for waitEvent.
var sup *supervisor

// cgroups are O_PATH fds of the test's cgroup directories, for
// SysProcAttr.CgroupFD.
var cgroups = map[string]*os.File{}

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	start := time.Now()
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: guest setup: %v\n", err)
		dumpAgentLog(os.Stderr)
		teardown()
		os.Exit(1)
	}
	fmt.Printf("guest setup (cgroups, policy, fdsup, agent ready) took %v\n", time.Since(start).Round(time.Millisecond))
	code := testutil.LeakCheck(m)
	if code != 0 {
		dumpAgentLog(os.Stdout)
	}
	teardown()
	fmt.Printf("guest tests took %v in all\n", time.Since(start).Round(time.Millisecond))
	os.Exit(code)
}

// setup makes the cgroups, moves this process into /pub, writes the
// policy and starts fdsup with the agent in /agent, waiting for READY=1.
func setup() error {
	for _, cg := range []string{"pub", "a", "b", "c", "own", "agent"} {
		dir := filepath.Join(cgRoot, cg)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", dir, err)
		}
		cgroups[cg] = os.NewFile(uintptr(fd), dir)
	}
	if err := os.WriteFile(filepath.Join(cgRoot, "pub", "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return fmt.Errorf("move into /pub: %w", err)
	}
	if err := os.WriteFile(config, []byte(policy), 0o644); err != nil {
		return err
	}
	// The guest kernel's default RLIMIT_NOFILE (4096 hard) leaves the agent
	// no room for entries beside its reserve for connections; systemd
	// raises it for services (LimitNOFILE=), fdsup does not.
	lim := unix.Rlimit{Cur: 1 << 16, Max: 1 << 16}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE for the agent: %w", err)
	}
	var err error
	sup, err = startSupervisor()
	if err != nil {
		return err
	}
	pid, err := sup.waitReady(0, 60*time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("agent ready: pid %d\n", pid)
	return nil
}

func teardown() {
	if sup != nil {
		sup.stop()
	}
	for _, f := range cgroups {
		f.Close()
	}
}

// supervisor is the fdsup process and what it printed.
type supervisor struct {
	cmd  *exec.Cmd
	log  *os.File
	mu   sync.Mutex
	cond *sync.Cond
	ev   []string // event lines, in order
	done bool     // its stdout ended
}

func startSupervisor() (*supervisor, error) {
	lf, err := os.Create(agentLog)
	if err != nil {
		return nil, err
	}
	s := &supervisor{log: lf}
	s.cond = sync.NewCond(&s.mu)
	s.cmd = exec.Command(fdsupBin, "-notify", notify, "-max", "8194", "-cgroup", filepath.Join(cgRoot, "agent"), "--",
		capd, "agent", "--config", config, "--socket", sock, "--log-level", "debug")
	s.cmd.Stderr = lf
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	go s.read(out)
	return s, nil
}

func (s *supervisor) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintf(s.log, "fdsup event: %s\n", line)
		s.mu.Lock()
		s.ev = append(s.ev, line)
		s.cond.Broadcast()
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.done = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// mark is the number of events so far: waitEvent(mark, ...) waits for a
// later one.
func (s *supervisor) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ev)
}

// waitEvent returns the first event at or after index from that starts
// with prefix, and its index.
func (s *supervisor) waitEvent(from int, prefix string, timeout time.Duration) (string, int, error) {
	timer := time.AfterFunc(timeout, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := from; ; {
		for ; i < len(s.ev); i++ {
			if strings.HasPrefix(s.ev[i], prefix) {
				return s.ev[i], i, nil
			}
		}
		if s.done {
			return "", 0, fmt.Errorf("fdsup ended before %q (events %q)", prefix, s.ev)
		}
		if time.Now().After(deadline) {
			return "", 0, fmt.Errorf("no %q from fdsup in %v (events %q)", prefix, timeout, s.ev)
		}
		s.cond.Wait()
	}
}

// waitReady waits for "ready pid=P" at or after event from and returns P.
func (s *supervisor) waitReady(from int, timeout time.Duration) (int, error) {
	line, _, err := s.waitEvent(from, "ready pid=", timeout)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimPrefix(line, "ready pid="))
}

// lastReady returns the pid of the latest "ready pid=P": the live agent.
func (s *supervisor) lastReady() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.ev) - 1; i >= 0; i-- {
		if p, ok := strings.CutPrefix(s.ev[i], "ready pid="); ok {
			return strconv.Atoi(p)
		}
	}
	return 0, fmt.Errorf("no ready event from fdsup (events %q)", s.ev)
}

// stop ends fdsup (SIGTERM: it stops the agent and closes the store).
func (s *supervisor) stop() {
	s.cmd.Process.Signal(unix.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		fmt.Fprintln(os.Stderr, "fdsup did not stop in 20s: killing it")
		s.cmd.Process.Kill()
		<-done
	}
	s.log.Close()
}

func dumpAgentLog(w io.Writer) {
	b, err := os.ReadFile(agentLog)
	if err != nil {
		return
	}
	fmt.Fprintf(w, "--- agent and fdsup log:\n%s--- end of log\n", b)
}

// runRole runs the test binary as a helper program.
func runRole(role string) int {
	switch role {
	case "pread-fd3":
		// Read fd 3 (a description passed with ExtraFiles) in this
		// process's cgroup: exit 0 and print what it read, or exit 3 on
		// EPERM, 1 on anything else.
		b := make([]byte, 64)
		n, err := unix.Pread(3, b, 0)
		switch {
		case err == nil:
			fmt.Printf("read %q\n", b[:n])
			return 0
		case errors.Is(err, unix.EPERM):
			fmt.Printf("pread: %v\n", err)
			return 3
		default:
			fmt.Printf("pread: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
	return 2
}

// env is the environment of capd commands: the agent's socket.
func env() []string { return append(os.Environ(), "CAPD_SOCKET="+sock) }

// inCgroup is a command that starts in cgroup cg ("" for /pub, the test's
// own).
func inCgroup(cg, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = env()
	if cg != "" && cg != "pub" {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgroups[cg].Fd())}
	}
	return cmd
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs name in cgroup cg with extra at fds 3, 4, ... and waits.
func run(t *testing.T, cg string, extra []*os.File, name string, args ...string) result {
	t.Helper()
	cmd := inCgroup(cg, name, args...)
	cmd.ExtraFiles = extra
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s %v in /%s: %v", name, args, cg, err)
	}
	return r
}

// roleIn re-executes the test binary as role in cgroup cg with extra at
// fds 3, ...
func roleIn(t *testing.T, cg, role string, extra ...*os.File) result {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := inCgroup(cg, self)
	cmd.Env = append(cmd.Env, roleEnv+"="+role)
	cmd.ExtraFiles = extra
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("role %s in /%s: %v", role, cg, err)
	}
	return r
}
