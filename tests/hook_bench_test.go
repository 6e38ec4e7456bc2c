package tests

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"
)

// BenchmarkRuncHook runs a busybox bundle (`true`, read-only root) with
// `runc run` in four configurations, alternating them in every round so
// all see the same machine:
//
//   - none: no hooks;
//   - floor: /bin/busybox true (a static C binary) as the createRuntime
//     and poststop hook: what any exec'd hook costs here;
//   - capd: capd hook at createRuntime (registers the container, one
//     granted entry requested, mounts /run/capd) and poststop
//     (unregisters);
//   - capd-create: capd hook at createRuntime only (the agent cleans up
//     through its pidfd of the container's init).
//
// ns/op is the time of one round of four; the metrics are medians and
// ratios to none.
func BenchmarkRuncHook(b *testing.B) {
	e := newCtrEnv(b, containerPolicy)
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}
	capdHook := []string{"capd", "hook", "--socket", e.agent.Socket}
	bundles := []struct {
		name string
		dir  string
	}{
		{"none", e.bundle([]string{"true"}, nil, true)},
		{"floor", e.bundleHooks([]string{"true"}, ann, "/bin/busybox", []string{"true"}, "createRuntime", "poststop")},
		{"capd", e.bundleHooks([]string{"true"}, ann, capd, capdHook, "createRuntime", "poststop")},
		{"capd-create", e.bundleHooks([]string{"true"}, ann, capd, capdHook, "createRuntime")},
	}
	run := func(bundle string) time.Duration {
		start := time.Now()
		out, err := exec.Command("runc", "--root", e.state, "run", "--bundle", bundle, "bench").CombinedOutput()
		d := time.Since(start)
		if err != nil {
			b.Fatalf("runc run: %v\n%s", err, out)
		}
		return d
	}
	times := make([][]time.Duration, len(bundles))
	for _, bu := range bundles {
		run(bu.dir)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range bundles {
			k := (k + i) % len(bundles) // rotate the order every round
			times[k] = append(times[k], run(bundles[k].dir))
		}
	}
	b.StopTimer()
	none := median(times[0])
	for k, bu := range bundles {
		m := median(times[k])
		b.ReportMetric(m, bu.name+"-ms")
		if k > 0 {
			b.ReportMetric(m/none, bu.name+"/none")
		}
	}
}

// BenchmarkHookStartup times what a runtime pays per container without
// the annotation (capd hook reads the state and exits: a Go start-up) and,
// for scale, one capd CLI round trip (start-up plus whoami), alternating.
func BenchmarkHookStartup(b *testing.B) {
	e := newCtrEnv(b, containerPolicy)
	state := `{"ociVersion":"1.0.2","id":"x","status":"creating","pid":1,"bundle":"/nonexistent"}`
	var hook, whoami []time.Duration
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(capd, "hook", "--socket", e.agent.Socket)
		cmd.Stdin = strings.NewReader(state)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("capd hook: %v\n%s", err, out)
		}
		hook = append(hook, time.Since(start))
		cmd = exec.Command(capd, "whoami")
		cmd.Env = e.agent.Env()
		start = time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("capd whoami: %v\n%s", err, out)
		}
		whoami = append(whoami, time.Since(start))
	}
	b.ReportMetric(median(hook), "hook-unannotated-ms")
	b.ReportMetric(median(whoami), "whoami-ms")
}

func median(d []time.Duration) float64 {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[len(d)/2].Microseconds()) / 1000
}
