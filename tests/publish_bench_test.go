package tests

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/testutil"
	"golang.org/x/sys/unix"
)

// BenchmarkPublishVsAcquire alternates chunks of 100 acquire, 100 pinned
// publish and 100 unpinned publish round trips on one persistent
// connection within one benchmark, each kind first in turn, so that all
// three see the same machine state, and reports each one's ns per round
// trip and their ratios. The
// benchmark's process, agent and client both, runs in bench.service, so
// that its unpinned entries follow a real owner cgroup; the entry it
// acquires is unpinned too, so the owner cgroup is watched throughout, as
// for a service that publishes more than one entry. Each publish sends the
// same memfd under a new name; the entries are revoked after each chunk,
// outside the timed part.
func BenchmarkPublishVsAcquire(b *testing.B) {
	testutil.RequireRoot(b)
	enterCgroup(b, testutil.NewCgroup(b, "bench.service"))
	a := startBenchAgent(b)
	c, err := client.Dial(a.socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fd, err := linux.MemfdCreate("bench")
	if err != nil {
		b.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	defer f.Close()
	pin := &client.PublishOptions{Pin: true}
	const chunk = 100
	var names [2][chunk]string
	for i := range chunk {
		names[0][i], names[1][i] = "p"+strconv.Itoa(i), "u"+strconv.Itoa(i)
	}
	acquire := func(n int) {
		for i := 0; i < n; i++ {
			got, err := c.AcquireFD(a.owner, "bench")
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(got)
		}
	}
	publish := func(names *[chunk]string, opts *client.PublishOptions) func(int) {
		return func(n int) {
			for i := 0; i < n; i++ {
				if err := c.Publish(names[i], f, opts); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	kinds := []func(int){acquire, publish(&names[0], pin), publish(&names[1], nil)}
	var took [3]time.Duration // acquire, pinned, unpinned
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; done, round = done+chunk, round+1 {
		n := min(chunk, b.N-done)
		// Each kind goes first in turn: whatever one chunk leaves behind
		// (the revoked entries' fds closing on the closer's goroutine)
		// reaches each kind as often.
		for k := range kinds {
			k = (k + round) % len(kinds)
			t0 := time.Now()
			kinds[k](n)
			took[k] += time.Since(t0)
		}
		b.StopTimer()
		for i := 0; i < n; i++ {
			for _, name := range []string{names[0][i], names[1][i]} {
				if err := c.Revoke(name); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.StartTimer()
	}
	acq, pinned, unpinned := took[0], took[1], took[2]
	b.ReportMetric(float64(acq.Nanoseconds())/float64(b.N), "acquire-ns/op")
	b.ReportMetric(float64(pinned.Nanoseconds())/float64(b.N), "pinned-ns/op")
	b.ReportMetric(float64(unpinned.Nanoseconds())/float64(b.N), "unpinned-ns/op")
	b.ReportMetric(float64(pinned)/float64(acq), "pinned/acquire")
	b.ReportMetric(float64(unpinned)/float64(acq), "unpinned/acquire")
	b.ReportMetric(float64(unpinned)/float64(pinned), "unpinned/pinned")
}

// enterCgroup moves this whole process into cg until the benchmark ends
// (before cg's own cleanup empties it).
func enterCgroup(b *testing.B, cg *testutil.Cgroup) {
	mount, err := cgroup.V2Mountpoint()
	if err != nil {
		b.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		b.Fatal(err)
	}
	var home string
	for line := range strings.Lines(string(self)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			home = p
		}
	}
	if home == "" {
		b.Fatal("no cgroup v2 line in /proc/self/cgroup")
	}
	move := func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
	}
	if err := move(cg.Dir); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := move(filepath.Join(mount, home)); err != nil {
			b.Errorf("move back to %s: %v", home, err)
		}
	})
}
