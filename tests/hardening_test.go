package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var attackerOnce sync.Once
var attackerPath string

// attacker returns a copy of the test binary that other uids may run.
func attacker(t *testing.T) string {
	t.Helper()
	attackerOnce.Do(func() {
		b, err := os.ReadFile("/proc/self/exe")
		if err != nil {
			return
		}
		p := filepath.Join(filepath.Dir(capd), "attacker")
		if os.WriteFile(p, b, 0o755) == nil {
			attackerPath = p
		}
	})
	if attackerPath == "" {
		t.Fatal("cannot copy the test binary for the attacker role")
	}
	return attackerPath
}

// attack runs the attacker role through setpriv with setprivArgs against
// pid's fd and returns what each attempt gave.
func attack(t *testing.T, pid, fd int, ptrace bool, setprivArgs ...string) map[string]string {
	t.Helper()
	args := append(setprivArgs, attacker(t))
	cmd := exec.Command("setpriv", args...)
	cmd.Env = append(os.Environ(), "CAPD_TEST_ROLE=attack", "CAPD_TEST_PID="+strconv.Itoa(pid), "CAPD_TEST_FD="+strconv.Itoa(fd))
	if ptrace {
		cmd.Env = append(cmd.Env, "CAPD_TEST_PTRACE=1")
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("setpriv %v: %v\n%s", setprivArgs, err, out)
	}
	var res map[string]string
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("attacker output %q: %v", out, err)
	}
	return res
}

// entryFD finds, as root with CAP_SYS_PTRACE, the agent's fd that holds
// the file at path.
func entryFD(t *testing.T, pid int, path string) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if target, _ := os.Readlink(filepath.Join(dir, e.Name())); target == path {
			n, _ := strconv.Atoi(e.Name())
			return n
		}
	}
	t.Fatalf("the agent holds no fd for %s", path)
	return -1
}

// The agent is non-dumpable before it holds any fd and runs in a mount
// namespace of its own with private propagation: an unprivileged uid, and
// root without CAP_SYS_PTRACE, can neither list nor reopen its fds, nor
// pidfd_getfd, kcmp or ptrace it. Root with CAP_SYS_PTRACE can (the
// control: Linux cannot refuse it, see docs/SECURITY.md).
func TestAgentRefusesFDAttacks(t *testing.T) {
	e := newEnv(t, seedPolicy)
	f := tempFile(t, "secret")
	defer f.Close()
	e.mustRun("", []*os.File{f}, "publish", "target", "--fd", "3")
	pid := e.agent.Cmd.Process.Pid
	fd := entryFD(t, pid, f.Name())

	self, _ := os.Readlink("/proc/self/ns/mnt")
	agentNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil || agentNS == self {
		t.Fatalf("agent mount namespace %q (%v), the test's %q", agentNS, err, self)
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, "shared:") || strings.Contains(l, "master:") {
			t.Fatalf("a mount in the agent's namespace propagates: %s", l)
		}
	}

	refused := map[string]bool{"EACCES": true, "EPERM": true}
	for _, who := range []struct {
		name string
		args []string
		ops  []string
	}{
		{"uid 65534", []string{"--reuid", "65534", "--regid", "65534", "--clear-groups"},
			[]string{"readdir", "readlink", "reopen", "pidfd_getfd", "kcmp", "ptrace"}},
		// CAP_DAC_OVERRIDE still lists the fd numbers (Linux checks only
		// DAC for the directory); what they are is refused.
		{"root without CAP_SYS_PTRACE", []string{"--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace"},
			[]string{"readlink", "reopen", "pidfd_getfd", "kcmp", "ptrace"}},
	} {
		res := attack(t, pid, fd, true, who.args...)
		for _, op := range who.ops {
			if !refused[res[op]] {
				t.Errorf("%s: %s against the agent gave %q, want EACCES or EPERM (all: %v)", who.name, op, res[op], res)
			}
		}
	}
	ctl := attack(t, pid, fd, false)
	for _, op := range []string{"readdir", "readlink", "reopen", "pidfd_getfd", "kcmp"} {
		if ctl[op] != "ok" {
			t.Errorf("control: root with CAP_SYS_PTRACE: %s gave %q", op, ctl[op])
		}
	}
}

// In a container handled by the hook, a uid-1000 process cannot see the
// root workload in /proc, let alone its fds, and /proc holds processes
// only; the workload runs on and root in the container still sees it.
func TestContainerProcHidesOtherUsers(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	// The workload outlives any wait below; the deferred kill ends it.
	b := e.bundle([]string{"sleep", "600"}, map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}, true)
	cmd := exec.Command("runc", "--root", e.state, "run", "--bundle", b, "web-proc")
	t.Cleanup(func() { exec.Command("runc", "--root", e.state, "delete", "-f", "web-proc").Run() })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { exec.Command("runc", "--root", e.state, "kill", "web-proc", "KILL").Run(); cmd.Wait() }()
	e.waitContainers(1)
	user := e.exec(exec.Command("runc", "--root", e.state, "exec", "--user", "1000:1000", "web-proc", "sh", "-c",
		`ls /proc; test -e /proc/1; echo "see-1: $?"; ls /proc/1/fd; echo "fd-1: $?"; test -e /proc/sys; echo "sys: $?"`))
	if user.code != 0 {
		t.Fatalf("runc exec as 1000: %+v", user)
	}
	for _, want := range []string{"see-1: 1", "fd-1: 1", "sys: 1"} {
		if !strings.Contains(user.stdout, want) {
			t.Errorf("uid 1000 in the container: output lacks %q:\n%s%s", want, user.stdout, user.stderr)
		}
	}
	root := e.exec(exec.Command("runc", "--root", e.state, "exec", "web-proc", "sh", "-c", `cat /proc/1/cmdline; echo; ls /proc/1/fd | wc -l`))
	if root.code != 0 || !strings.HasPrefix(root.stdout, "sleep") {
		t.Fatalf("root in the container: %+v", root)
	}
}
