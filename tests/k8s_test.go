package tests

import (
	"strings"
	"testing"
	"time"
)

// TestK8sNodeRunsPods: the node harness works end to end. A busybox
// container in a host-network pod logs a line and exits 0; its pod is
// removed; a second pod's container runs across a containerd restart,
// after which CRI answers and exec reaches it.
func TestK8sNodeRunsPods(t *testing.T) {
	n := newNode(t)

	start := time.Now()
	pod := n.RunPod("hello", "capd-test", map[string]string{"capd.example/note": "smoke"})
	ctr := n.Run(pod, "hello", "capd-test", "echo", nil, "/bin/sh", "-c", "echo hello from the node; cat /proc/self/cgroup")
	t.Logf("pod and container started in %v", time.Since(start).Round(time.Millisecond))
	if code := n.WaitExit(ctr); code != 0 {
		t.Fatalf("container exited %d; logs:\n%s", code, n.Logs(ctr))
	}
	logs := n.Logs(ctr)
	if !strings.Contains(logs, "hello from the node") {
		t.Fatalf("logs lack the echoed line:\n%s", logs)
	}
	if p := n.InspectPod(pod); p.State != "SANDBOX_READY" || p.Annotations["capd.example/note"] != "smoke" {
		t.Errorf("pod: %+v, want ready with its annotation", p)
	}
	n.RemovePod(pod)
	if ids := n.PodIDs(); len(ids) != 0 {
		t.Fatalf("pods after removal: %v", ids)
	}

	pod2 := n.RunPod("sleeper", "capd-test", nil)
	ctr2 := n.Run(pod2, "sleeper", "capd-test", "sleep", nil, "sleep", "3600")
	before := n.Inspect(ctr2)
	if before.State != "CONTAINER_RUNNING" || before.Pid == 0 || !strings.HasPrefix(before.CgroupsPath, n.Cgroup()+"/") {
		t.Fatalf("running container: %+v", before)
	}
	t.Logf("container pid %d, cgroups path %s, v2 cgroup %s", before.Pid, before.CgroupsPath, before.Cgroup)

	n.Restart()
	after := n.Inspect(ctr2)
	if after.State != "CONTAINER_RUNNING" || after.Pid != before.Pid {
		t.Fatalf("after the restart the container is %s pid %d, was running as %d", after.State, after.Pid, before.Pid)
	}
	if out, err := n.Exec(ctr2, "echo", "still here"); err != nil || !strings.Contains(out, "still here") {
		t.Fatalf("exec after the restart: %q, %v", out, err)
	}
}
