package nri

import "testing"

// The runtime's cgroups path becomes the cgroup v2 path the kernel shows.
func TestCgroupPath(t *testing.T) {
	for in, want := range map[string]string{
		"/kubepods/besteffort/pod1/abc":                           "/kubepods/besteffort/pod1/abc",
		"/kubepods//x/../y":                                       "/kubepods/y",
		"kubepods-besteffort-pod1.slice:cri-containerd:abc":       "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope",
		"kubepods.slice:crio:abc":                                 "/kubepods.slice/crio-abc.scope",
		":docker:abc":                                             "/system.slice/docker-abc.scope",
		"-.slice:cri-containerd:abc":                              "/cri-containerd-abc.scope",
		"kubepods-burstable-podd1b2_c3.slice:cri-containerd:0123": "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podd1b2_c3.slice/cri-containerd-0123.scope",
	} {
		if got, err := cgroupPath(in); err != nil || got != want {
			t.Errorf("cgroupPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "kubepods", "a:b", "a.slice:b:", "x:cri:abc", "a--b.slice:p:n", "-a.slice:p:n", "a-.slice:p:n"} {
		if got, err := cgroupPath(in); err == nil {
			t.Errorf("cgroupPath(%q) = %q, want an error", in, got)
		}
	}
}
