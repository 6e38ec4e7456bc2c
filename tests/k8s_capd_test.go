package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

// nriPlugin is a running capd-nri.
type nriPlugin struct {
	cmd *exec.Cmd
	log *testutil.LogBuffer
}

// startPlugin runs capd-nri against node n's NRI socket and agent a, and
// waits until the runtime has synchronized it.
func startPlugin(t testing.TB, n *node, a *testutil.Agent) *nriPlugin {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "nri.toml")
	body := fmt.Sprintf("[nri]\nenable = true\nsocket = %q\nagent_socket = %q\nbinary = %q\n", n.NRISocket(), a.Socket, capd)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &nriPlugin{cmd: exec.Command(capdNRI, "--config", cfg, "--log-level", "debug"), log: &testutil.LogBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
	})
	p.waitLog(t, "synchronized with the runtime", 1)
	return p
}

// waitLog waits until the plugin's log holds substr n times.
func (p *nriPlugin) waitLog(t testing.TB, substr string, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); strings.Count(p.log.String(), substr) < n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("capd-nri did not log %q %d times in 20s:\n%s", substr, n, p.log)
		}
	}
}

// k8sEnv is a containerd node with capd: an agent, a host service that
// published zincati-fd, and the plugin.
type k8sEnv struct {
	*env
	n *node
	p *nriPlugin
}

const k8sPolicy = `
[[grant]]
consumer = "pod:payments/*"
acquire  = ["rpm-ostreed.service:zincati-fd", "pod:payments/maker/app:made"]
`

func newK8sEnv(t *testing.T) *k8sEnv {
	t.Helper()
	e := &k8sEnv{env: newEnvWith(t, testutil.StartAgentAlone(t, capd, k8sPolicy), "rpm-ostreed.service"), n: newNode(t)}
	e.publishFile("rpm-ostreed.service", "zincati-fd", "from-the-host")
	e.p = startPlugin(t, e.n, e.agent)
	return e
}

// acquireScript asks capd who it is, acquires ref and prints the fd's
// content, then the exit code of acquire; then it stays until killed.
func acquireScript(ref string) []string {
	return []string{"sh", "-c", `/run/capd/capd whoami; /run/capd/capd acquire ` + ref + ` -- cat /proc/self/fd/3; echo "acquire=$?"; exec sleep 1000`}
}

// An annotated pod's container finds capd at /run/capd, is
// pod:NAMESPACE/POD/NAME, and acquires what pod:payments/* is granted; an
// unannotated pod has no /run/capd; an annotated pod of another namespace
// is denied.
func TestK8sPodAcquires(t *testing.T) {
	e := newK8sEnv(t)
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}
	pod := e.n.RunPod("web", "payments", ann)
	ctr := e.n.Run(pod, "web", "payments", "app", nil, acquireScript("rpm-ostreed.service:zincati-fd")...)
	out := e.n.WaitLogs(ctr, "acquire=")
	if !strings.Contains(out, "pod:payments/web/app") || !strings.Contains(out, "from-the-host") || !strings.Contains(out, "acquire=0") {
		t.Fatalf("annotated pod:\n%s\nplugin:\n%s\nagent:\n%s", out, e.p.log, e.agent.Log)
	}

	plain := e.n.RunPod("plain", "payments", nil)
	ctr = e.n.Run(plain, "plain", "payments", "app", nil, "sh", "-c", `ls /run/capd/capd; echo "ls=$?"; exec sleep 1000`)
	if out := e.n.WaitLogs(ctr, "ls="); strings.Contains(out, "ls=0") {
		t.Fatalf("an unannotated pod has capd:\n%s", out)
	}

	other := e.n.RunPod("web", "shop", ann)
	ctr = e.n.Run(other, "web", "shop", "app", nil, acquireScript("rpm-ostreed.service:zincati-fd")...)
	if out := e.n.WaitLogs(ctr, "acquire="); !strings.Contains(out, "pod:shop/web/app") || !strings.Contains(out, "acquire=4") || strings.Contains(out, "from-the-host") {
		t.Fatalf("an ungranted pod:\n%s", out)
	}
}

// A pod's container publishes; a container of another pod acquires it by
// its owner pod:NAMESPACE/POD/NAME; when the publishing pod goes, its
// unpinned entry goes with it.
func TestK8sPodPublishes(t *testing.T) {
	e := newK8sEnv(t)
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}
	maker := e.n.RunPod("maker", "payments", ann)
	mk := e.n.Run(maker, "maker", "payments", "app", nil, "sh", "-c", `echo made-in-a-pod > /tmp/m; /run/capd/capd publish made < /tmp/m; echo "publish=$?"; exec sleep 1000`)
	if out := e.n.WaitLogs(mk, "publish="); !strings.Contains(out, "publish=0") {
		t.Fatalf("publish from a pod:\n%s\nagent:\n%s", out, e.agent.Log)
	}
	user := e.n.RunPod("user", "payments", ann)
	ctr := e.n.Run(user, "user", "payments", "app", nil, acquireScript("pod:payments/maker/app:made")...)
	if out := e.n.WaitLogs(ctr, "acquire="); !strings.Contains(out, "made-in-a-pod") || !strings.Contains(out, "acquire=0") {
		t.Fatalf("acquire of a pod's entry:\n%s", out)
	}
	e.n.StopPod(maker)
	e.n.RemovePod(maker)
	for deadline := time.Now().Add(10 * time.Second); strings.Contains(e.mustRun("", nil, "list").stdout, "made"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the removed pod's unpinned entry is still listed:\n%s", e.mustRun("", nil, "list").stdout)
		}
	}
}

// io.capd.required=true with a missing grant fails the container's
// creation with the agent's reason; with the grant it starts.
func TestK8sRequiredFailsCreation(t *testing.T) {
	e := newK8sEnv(t)
	pod := e.n.RunPod("strict", "shop", map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.required": "true"})
	_, err := e.n.CreateContainer(pod, "strict", "shop", "app", nil, "sleep", "1000")
	if err == nil || !strings.Contains(err.Error(), "pod shop/strict container app") || !strings.Contains(err.Error(), "rpm-ostreed.service:zincati-fd") {
		t.Fatalf("creation of a container that requires an entry it may not have: %v\nplugin:\n%s", err, e.p.log)
	}
	ok := e.n.RunPod("strict", "payments", map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.required": "true"})
	ctr := e.n.Run(ok, "strict", "payments", "app", nil, acquireScript("rpm-ostreed.service:zincati-fd")...)
	if out := e.n.WaitLogs(ctr, "acquire="); !strings.Contains(out, "acquire=0") {
		t.Fatalf("a granted required container:\n%s", out)
	}
}

// Agent restarts with pods running: the plugin registers them again, no
// pod process is a host administrator at any moment (status is refused
// throughout), and the grant works again afterwards.
func TestK8sAgentRestart(t *testing.T) {
	e := newK8sEnv(t)
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}
	pod := e.n.RunPod("web", "payments", ann)
	ctr := e.n.Run(pod, "web", "payments", "app", nil, "sleep", "1000")
	e.p.waitLog(t, "container registered", 1)
	probe := func(when string) {
		t.Helper()
		out, err := e.n.Exec(ctr, "sh", "-c", `/run/capd/capd status; echo "status=$?"; /run/capd/capd whoami`)
		if strings.Contains(out, "status=0") {
			t.Fatalf("%s: a pod process is a host administrator:\n%s (%v)", when, out, err)
		}
	}
	probe("before the restart")
	for i, kill := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		e.agent.Cmd.Process.Signal(kill)
		e.agent.Cmd.Wait()
		probe("while the agent is down")
		restarted := testutil.RestartAgent(t, capd, e.agent)
		e.agent = restarted
		e.publishFile("rpm-ostreed.service", "zincati-fd", "from-the-host")
		e.p.waitLog(t, "container registered", 2+i)
		out, _ := e.n.Exec(ctr, "sh", "-c", `/run/capd/capd whoami; /run/capd/capd acquire rpm-ostreed.service:zincati-fd -- cat /proc/self/fd/3; echo "acquire=$?"`)
		if !strings.Contains(out, "pod:payments/web/app") || !strings.Contains(out, "from-the-host") {
			t.Fatalf("after agent restart %d (%v): %s\nplugin:\n%s", i+1, kill, out, e.p.log)
		}
		probe("after the restart")
	}
}

// containerd restarts: the plugin connects again, is synchronized, and a
// new annotated pod works.
func TestK8sContainerdRestart(t *testing.T) {
	e := newK8sEnv(t)
	e.n.Restart()
	e.p.waitLog(t, "synchronized with the runtime", 2)
	pod := e.n.RunPod("late", "payments", map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"})
	ctr := e.n.Run(pod, "late", "payments", "app", nil, acquireScript("rpm-ostreed.service:zincati-fd")...)
	if out := e.n.WaitLogs(ctr, "acquire="); !strings.Contains(out, "acquire=0") || !strings.Contains(out, "from-the-host") {
		t.Fatalf("after a containerd restart:\n%s\nplugin:\n%s", out, e.p.log)
	}
}

// The plugin and the agent both restart (kill -9) with a pod running: the
// new plugin is synchronized by the runtime and registers the running
// container again (its cgroup holds its whole workload by now), which is
// the pod's again, never a host process's.
func TestK8sPluginRestart(t *testing.T) {
	e := newK8sEnv(t)
	pod := e.n.RunPod("web", "payments", map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"})
	ctr := e.n.Run(pod, "web", "payments", "app", nil, "sh", "-c", "sleep 1000 & exec sleep 1000")
	e.p.waitLog(t, "container registered", 1)
	e.p.cmd.Process.Kill()
	e.p.cmd.Wait()
	e.agent.Cmd.Process.Kill()
	e.agent.Cmd.Wait()
	e.agent = testutil.RestartAgent(t, capd, e.agent)
	e.publishFile("rpm-ostreed.service", "zincati-fd", "from-the-host")
	if out, _ := e.n.Exec(ctr, "sh", "-c", `/run/capd/capd whoami; /run/capd/capd status; echo "status=$?"`); strings.Contains(out, "pod:") || strings.Contains(out, "status=0") {
		t.Fatalf("before the plugin is back, the container is %s", out)
	}
	e.p = startPlugin(t, e.n, e.agent)
	e.p.waitLog(t, "container registered", 1)
	out, _ := e.n.Exec(ctr, "sh", "-c", `/run/capd/capd whoami; /run/capd/capd acquire rpm-ostreed.service:zincati-fd -- cat /proc/self/fd/3`)
	if !strings.Contains(out, "pod:payments/web/app") || !strings.Contains(out, "from-the-host") {
		t.Fatalf("after the plugin's restart: %s\nplugin:\n%s", out, e.p.log)
	}
}
