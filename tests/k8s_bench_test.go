package tests

import (
	"fmt"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

// BenchmarkK8sCreateStart: crictl create + start of a busybox container in
// a running pod, on a containerd node with capd-nri connected (an
// annotated container, which gets /run/capd and is registered with the
// agent at start, and an unannotated one) against a node without any NRI
// plugin, rotating the order in every round. Containers are removed
// between rounds, outside the timing.
func BenchmarkK8sCreateStart(b *testing.B) {
	e := newEnvWith(b, testutil.StartAgentAlone(b, capd, k8sPolicy), "rpm-ostreed.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "from-the-host")
	withPlugin, plain := newNode(b), newNode(b)
	startPlugin(b, withPlugin, e.agent)
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}
	type kind struct {
		name string
		n    *node
		pod  string
		ns   string
	}
	kinds := []kind{
		{"none", plain, plain.RunPod("bench", "payments", nil), "payments"},
		{"capd-unannotated", withPlugin, withPlugin.RunPod("bench", "shop", nil), "shop"},
		{"capd-annotated", withPlugin, withPlugin.RunPod("bench-capd", "payments", ann), "payments"},
	}
	names := map[string]string{"none": "bench", "capd-unannotated": "bench", "capd-annotated": "bench-capd"}
	run := func(k kind, i int) time.Duration {
		start := time.Now()
		id, err := k.n.CreateContainer(k.pod, names[k.name], k.ns, fmt.Sprintf("c%d", i), nil, "sleep", "1000")
		if err == nil {
			err = k.n.Start(id)
		}
		d := time.Since(start)
		if err != nil {
			b.Fatalf("%s: %v", k.name, err)
		}
		k.n.StopContainer(id, 0)
		k.n.RemoveContainer(id)
		return d
	}
	for _, k := range kinds {
		run(k, -1)
	}
	times := make([][]time.Duration, len(kinds))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range kinds {
			j := (j + i) % len(kinds)
			times[j] = append(times[j], run(kinds[j], i))
		}
	}
	b.StopTimer()
	none := median(times[0])
	for j, k := range kinds {
		m := median(times[j])
		b.ReportMetric(m, k.name+"-ms")
		if j > 0 {
			b.ReportMetric(m/none, k.name+"/none")
		}
	}
}
