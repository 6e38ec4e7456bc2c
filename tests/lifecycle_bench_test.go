package tests

import (
	"errors"
	"os"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/testutil"
)

// BenchmarkDropDelay measures how long an unpinned entry outlives its
// owner's cgroup. Each round starts a process in bench.service, publishes
// an unpinned entry from it, waits 50 ms (longer than the kernel's 20 ms
// rate limit on cgroup.events notifications, as for a service that has
// been running), then writes cgroup.kill (through containerd/cgroups) and measures, from that write:
//
//   - notify: until this process's own inotify watch on the cgroup's
//     cgroup.events reads "populated 0" (the kernel's notification, the
//     floor for any event-driven agent);
//   - drop: until the agent answers not-found to an acquire of the entry,
//     polled in a tight loop (one round trip, ~25 µs, of resolution).
//
// Both are measured in the same round; ns/op is meaningless here. The
// just-started variant kills without the 50 ms wait: the kernel then
// delays the notification up to 20 ms after the previous one (the
// process's arrival), and the drop with it.
func BenchmarkDropDelay(b *testing.B) {
	b.Run("settled", func(b *testing.B) { benchDropDelay(b, 50*time.Millisecond) })
	b.Run("just-started", func(b *testing.B) { benchDropDelay(b, 0) })
}

func benchDropDelay(b *testing.B, settle time.Duration) {
	testutil.RequireRoot(b)
	a := testutil.StartAgent(b, capd, "[[grant]]\nconsumer = \"cgroup:/\"\nacquire = [\"bench.service:*\"]\n")
	cg := testutil.NewCgroup(b, "bench.service")
	c, err := client.Dial(a.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ino, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(ino)
	if _, err := unix.InotifyAddWatch(ino, cg.Dir+"/cgroup.events", unix.IN_MODIFY); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open("/dev/null")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var notify, drop []time.Duration
	buf := make([]byte, 4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		keeper := cg.Command("sleep", "3600")
		if err := keeper.Start(); err != nil {
			b.Fatal(err)
		}
		pub := cg.Command(capd, "publish", "e", "--fd", "3")
		pub.Env, pub.ExtraFiles = a.Env(), []*os.File{f}
		if out, err := pub.CombinedOutput(); err != nil {
			b.Fatalf("publish: %v\n%s", err, out)
		}
		time.Sleep(settle)
		drain(ino, buf)
		b.StartTimer()

		start := time.Now()
		cg.KillAsync(b)
		notified, dropped := time.Duration(0), time.Duration(0)
		for notified == 0 || dropped == 0 {
			if notified == 0 && readable(ino) {
				drain(ino, buf)
				if ev, _ := os.ReadFile(cg.Dir + "/cgroup.events"); len(ev) > 0 && string(ev[:11]) == "populated 0" {
					notified = time.Since(start)
				}
			}
			if dropped == 0 {
				fd, err := c.AcquireFD("bench.service", "e")
				switch {
				case err == nil:
					unix.Close(fd)
				case errors.Is(err, client.ErrNotFound):
					dropped = time.Since(start)
				default:
					b.Fatal(err)
				}
			}
			if time.Since(start) > 5*time.Second {
				b.Fatalf("after 5 s: notified %v, dropped %v", notified, dropped)
			}
		}
		b.StopTimer()
		keeper.Wait()
		notify, drop = append(notify, notified), append(drop, dropped)
		b.StartTimer()
	}
	b.StopTimer()
	med := func(d []time.Duration) (time.Duration, time.Duration) {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2], d[len(d)-1]
	}
	mn, xn := med(notify)
	md, xd := med(drop)
	b.ReportMetric(float64(mn.Microseconds()), "notify-µs-median")
	b.ReportMetric(float64(xn.Microseconds()), "notify-µs-max")
	b.ReportMetric(float64(md.Microseconds()), "drop-µs-median")
	b.ReportMetric(float64(xd.Microseconds()), "drop-µs-max")
}

func readable(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(p, 0)
	return n > 0
}

func drain(fd int, buf []byte) {
	for readable(fd) {
		unix.Read(fd, buf)
	}
}
