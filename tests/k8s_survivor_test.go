package tests

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// A process that would outlive its container's init (a pod sharing one pid
// namespace, so the init's exit alone kills nothing) never lapses into
// another identity: containerd's runc shim kills what is left in the
// container when its init exits, and the agent ends the registration only
// when the container's cgroup is empty, so no process of it is ever seen
// without the pod container's identity (the agent follows the cgroup, as
// it does for survivors of the OCI hook's containers, which runc alone
// lets live). What the survivor published, it published as the pod's.
func TestK8sSurvivorNeverLapses(t *testing.T) {
	e := newK8sEnv(t)
	spec := e.n.PodSpec("web", "payments", map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"})
	spec.Linux.SecurityContext.NamespaceOptions.Pid = 0 // POD: one pid namespace for the pod
	pod, err := e.n.RunPodSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctr := e.n.Run(pod, "web", "payments", "app", nil, "sh", "-c",
		`echo early > /tmp/s; /run/capd/capd publish --pin from-app < /tmp/s; (sleep 0.5; /run/capd/capd publish --pin from-survivor < /tmp/s; exec sleep 1000) & sleep 0.2; exit 0`)
	if code := e.n.WaitExit(ctr); code != 0 {
		t.Fatalf("the init exited %d:\n%s", code, e.n.Logs(ctr))
	}
	var st struct{ Containers int }
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		json.Unmarshal([]byte(e.mustRun("", nil, "status", "--json").stdout), &st)
		if st.Containers == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container is still registered 15 s after its init exited:\n%s", e.agent.Log)
		}
	}
	list := e.mustRun("", nil, "list").stdout
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, "from-") && !strings.HasPrefix(line, "pod:payments/web/app ") {
			t.Fatalf("a process of the container published as another identity:\n%s", list)
		}
	}
	if !strings.Contains(list, "from-app") {
		t.Fatalf("the container's own pinned entry is missing:\n%s", list)
	}
}
