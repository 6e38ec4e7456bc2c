package tests

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Attack: restart the agent. Under systemd, entries survive kill -9 and
// systemctl restart (the fd store), but container registrations did not:
// afterwards the container's processes are plain cgroup:/PATH identities,
// lose their grants, and root inside passes for a host administrator. A
// registered container keeps its identity while any process remains in
// its cgroup, across agent restarts.
//
// Everything runs inside a real systemd (systemd-nspawn, see
// bootMachine): a publishing unit, a plain (non-unit) cgroup whose only
// process, a sleep in a mount namespace of its own, is registered as
// container "web" by the real `capd hook`, and processes moved into that
// cgroup that ask the agent who they are.
func TestFailClosedSystemdRestartKeepsRegistrations(t *testing.T) {
	m := bootMachine(t)
	// Power the machine off by its PID 1 (through a pidfd: no pid reuse);
	// killing systemd-nspawn alone leaves the machine's systemd running.
	if pidfd, err := unix.PidfdOpen(m.pid1, 0); err == nil {
		t.Cleanup(func() { unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); unix.Close(pidfd) })
	}
	m.write("/etc/capd/capd.toml", "[[grant]]\nconsumer = \"container:web\"\nacquire = [\"pub.service:ctr-fd\"]\n", 0o644)
	m.must("systemctl", "restart", "capd.service")
	m.unit("pub", "sh", "-c", `echo ctr-secret > /run/ctr-secret && exec 3</run/ctr-secret && exec /run/capd-bin publish --pin ctr-fd --fd 3`)

	v2 := strings.TrimSpace(m.must("sh", "-c", `[ -f /sys/fs/cgroup/cgroup.controllers ] && echo /sys/fs/cgroup || echo /sys/fs/cgroup/unified`))
	dir := v2 + "/capdfc-ctr"
	m.must("mkdir", "-p", dir)
	init := m.cmd("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec unshare --mount --propagation private sleep 1000`, dir)
	if err := init.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.cmd("sh", "-c", `echo 1 > "$0/cgroup.kill"`, dir).Run()
		init.Wait()
	})
	var pid int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		procs := strings.Fields(m.must("cat", dir+"/cgroup.procs"))
		if len(procs) == 1 {
			pid, _ = strconv.Atoi(procs[0])
			if comm, _ := os.ReadFile(fmt.Sprintf("%s/proc/%d/comm", m.root, pid)); string(comm) == "sleep\n" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's init did not start alone in %s: %v", dir, procs)
		}
	}
	m.must("mkdir", "-p", "/run/capdfc-bundle/rootfs")
	m.write("/run/capdfc-bundle/config.json", `{"root":{"path":"rootfs"}}`, 0o644)
	hook := m.cmd("/run/capd-bin", "hook")
	hook.Stdin = strings.NewReader(ociState("fake-ctr", pid, "/run/capdfc-bundle",
		map[string]string{"io.capd.acquire": "pub.service:ctr-fd", "io.capd.name": "web"}))
	out, err := hook.CombinedOutput()
	t.Logf("capd hook in the machine: %v %s", err, out)

	// inCtr runs capd ARGS in the container's cgroup inside the machine.
	inCtr := func(args ...string) result {
		t.Helper()
		return execResult(t, m.cmd(append([]string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec /run/capd-bin "$@"`, dir}, args...)...))
	}
	check := func(when string) {
		t.Helper()
		if r := inCtr("whoami"); strings.TrimSpace(r.stdout) != "container:web" {
			t.Errorf("%s: the container's process is %q (%s), want container:web", when, strings.TrimSpace(r.stdout), r.stderr)
		}
		if r := inCtr("acquire", "pub.service:ctr-fd", "--", "cat", "/proc/self/fd/3"); r.code != 0 || r.stdout != "ctr-secret\n" {
			t.Errorf("%s: the container's grant: %+v", when, r)
		}
		refused(t, when+": capd status in the container", inCtr("status"), 4)
	}
	check("registered")

	old := m.mainPID()
	m.must("kill", "-9", strconv.Itoa(old))
	for deadline := time.Now().Add(20 * time.Second); m.mainPID() == 0 || m.mainPID() == old; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("systemd did not restart the agent")
		}
	}
	check("after kill -9 of the agent")

	m.must("systemctl", "restart", "capd.service")
	check("after systemctl restart capd")
}
