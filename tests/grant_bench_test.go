package tests

import (
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/testutil"
)

// BenchmarkAcquireGrantVsShared alternates, in chunks on one connection,
// acquires of an entry shared by its consumers (every consumer gets the
// entry's own description) and of one published per consumer (this
// consumer's grant, made at its first acquire): what a grant costs an
// acquire once it exists. A real agent and publisher (capd publish in a
// cgroup of its own); this process is the consumer.
func BenchmarkAcquireGrantVsShared(b *testing.B) {
	testutil.RequireRoot(b)
	me, err := cgroupProcPath()
	if err != nil {
		b.Fatal(err)
	}
	a := testutil.StartAgent(b, capd, "[[grant]]\nconsumer = \""+me+"\"\nacquire = [\"benchpub.service:*\"]\n")
	cg := testutil.NewCgroup(b, "benchpub.service")
	var files []*os.File
	for range 2 {
		fd, err := unix.MemfdCreate("bench", unix.MFD_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "bench")
		defer f.Close()
		files = append(files, f)
	}
	pub := cg.Command(capd, "publish", "shared=3", "--", capd, "publish", "--per-consumer", "own=4", "--", "sleep", "600")
	pub.Env = a.Env()
	pub.ExtraFiles = files
	var stderr strings.Builder
	pub.Stderr = &stderr
	if err := pub.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { pub.Process.Kill(); pub.Wait() }()
	c, err := client.Dial(a.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// Wait for both, and make the grant.
	for _, name := range []string{"shared", "own"} {
		fd, err := c.AcquireFDWait("benchpub.service", name, 10*time.Second)
		if err != nil {
			b.Fatalf("acquire %s: %v (%s)", name, err, stderr.String())
		}
		unix.Close(fd)
	}
	const chunk = 100
	var shared, own time.Duration
	loop := func(name string, n int) time.Duration {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			fd, err := c.AcquireFD("benchpub.service", name)
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
		return time.Since(t0)
	}
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		shared += loop("shared", n)
		own += loop("own", n)
	}
	b.ReportMetric(float64(shared.Nanoseconds())/float64(b.N), "shared-ns/op")
	b.ReportMetric(float64(own.Nanoseconds())/float64(b.N), "grant-ns/op")
	b.ReportMetric(float64(own)/float64(shared), "grant/shared")
}
