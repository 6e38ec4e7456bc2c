package tests

import (
	"strings"
	"testing"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/linux"
)

// REGISTER with RUNNING (an NRI plugin registering a running container
// again) drops the check that the cgroup holds only the process the pidfd
// names; the cgroup the runtime reports must then agree with the init's. A
// registration without it, or with another cgroup (a pid the runtime
// reported, recycled since into a host scope), is refused, and the host
// scope's processes keep their identity and gain no grant.
func TestRunningCannotTakeOverAHostScope(t *testing.T) {
	e := newFCEnv(t, nil, "[[grant]]\nconsumer = \"pod:payments/*\"\nacquire = [\"rpm-ostreed.service:zincati-fd\"]\n", "rpm-ostreed.service", "session-7.scope")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "secret")
	first := startIn(t, e.cgs["session-7.scope"], "sleep", "300")
	startIn(t, e.cgs["session-7.scope"], "sleep", "300")
	if who := strings.TrimSpace(e.mustRun("session-7.scope", nil, "whoami").stdout); who != "session-7.scope" {
		t.Fatalf("before: %s", who)
	}
	pidfd, err := linux.PidfdOpen(first.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(pidfd)
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, cg := range []string{"", "/kubepods/besteffort/pod1/0123abcd"} {
		id, _, err := c.Register(&client.Registration{ID: "0123abcd", Name: "app", Pod: "payments/web", Running: true, Cgroup: cg}, pidfd)
		if err == nil {
			t.Errorf("a RUNNING registration (runtime's cgroup %q) of host scope %s (two processes) was accepted as %s", cg, e.cgs["session-7.scope"].Path, id)
		}
	}
	who := strings.TrimSpace(e.mustRun("session-7.scope", nil, "whoami").stdout)
	r := e.run("session-7.scope", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "cat", "/proc/self/fd/3")
	if who != "session-7.scope" || r.code == 0 {
		t.Errorf("the host scope's processes are now %s; acquire of pod:payments/*'s grant: exit %d %q", who, r.code, r.stdout)
	}
}
