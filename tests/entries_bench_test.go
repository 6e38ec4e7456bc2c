package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capd-dev/capd/agent"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/testutil"
)

// entryCounts are the numbers of entries BenchmarkEntryMemory measures at.
// The last is as many as RLIMIT_NOFILE (20,000 here) leaves room for, and
// takes the agent's heap past the Go runtime's 4 MB minimum.
var entryCounts = []int{0, 1000, 10000, 19000}

// entriesConfig lets one owner hold every entry the benchmark publishes;
// fewer connections leave RLIMIT_NOFILE room for them.
const entriesConfig = `
[agent]
max_connections = 64
max_entries = 19500
default_max_entries = 19500
`

// BenchmarkEntryMemory measures what holding entries costs, against
// s6-fdholderd (Debian's s6) holding as many fds, in one run. One owner,
// bench.service (kept populated), publishes unpinned memfd entries, named
// m0, m1, ..., in steps up to each count of entryCounts:
//
//   - agent: the resident set (VmRSS) of a capd agent process, the binary
//     under test;
//   - s6: the resident set of an s6-fdholderd holding as many memfds,
//     each stored with s6-fdholder-store (ids of the same length);
//   - heap: the Go live heap and heap objects, after a collection, of an
//     agent running in this process and holding the same entries.
//
// Each is reported per entry over each step between two counts
// (B/entry@FROM-TO, objs/entry@FROM-TO; alloc-B/publish is what the
// in-process agent allocated per publish, garbage included) and as a total
// at each count (agent-kB@N, s6-kB@N). The agent's resident set follows
// its heap as the garbage collector lets it grow: to the runtime's 4 MB
// minimum first, whatever the entries (the first steps), then to twice
// the live heap (GOGC=100; the last step).
// ns/op is meaningless here; run it with -benchtime 1x.
func BenchmarkEntryMemory(b *testing.B) {
	testutil.RequireRoot(b)
	s6d, err := exec.LookPath("s6-fdholder-daemon")
	if err != nil {
		b.Fatalf("s6-fdholder-daemon (Debian's s6) is the baseline: %v", err)
	}
	cg := testutil.NewCgroup(b, "bench.service")
	cg.Keep(b)
	for i := 0; i < b.N; i++ {
		heap, objs, allocs := inProcessHeap(b, cg)
		a := testutil.StartAgent(b, capd, entriesConfig)
		s6 := startS6(b, s6d)
		var rss, s6rss []int64
		for j, n := range entryCounts {
			from := 0
			if j > 0 {
				from = entryCounts[j-1]
			}
			publishMemfds(b, cg, a.Socket, from, n)
			s6.store(b, from, n)
			time.Sleep(200 * time.Millisecond) // let both finish what the last request started
			rss = append(rss, vmRSS(b, a.Cmd.Process.Pid))
			s6rss = append(s6rss, vmRSS(b, s6.cmd.Process.Pid))
		}
		a.Stop()
		s6.stop()
		if i < b.N-1 {
			continue
		}
		for j, n := range entryCounts {
			b.ReportMetric(float64(rss[j])/1024, fmt.Sprintf("agent-kB@%d", n))
			b.ReportMetric(float64(s6rss[j])/1024, fmt.Sprintf("s6-kB@%d", n))
			if j == 0 {
				continue
			}
			// Per entry over the step from the previous count to n.
			d, at := float64(n-entryCounts[j-1]), fmt.Sprintf("@%d-%d", entryCounts[j-1], n)
			b.ReportMetric(float64(rss[j]-rss[j-1])/d, "agent-B/entry"+at)
			b.ReportMetric(float64(s6rss[j]-s6rss[j-1])/d, "s6-B/entry"+at)
			b.ReportMetric(float64(heap[j]-heap[j-1])/d, "heap-B/entry"+at)
			b.ReportMetric(float64(objs[j]-objs[j-1])/d, "objs/entry"+at)
			b.ReportMetric(float64(allocs[j]-allocs[j-1])/d, "alloc-B/publish"+at)
		}
	}
}

// inProcessHeap runs an agent in this process, publishes into it from cg as
// BenchmarkEntryMemory does, and returns the live heap and heap objects
// after a collection at each count of entryCounts.
func inProcessHeap(b *testing.B, cg *testutil.Cgroup) (heap, objs, allocs []int64) {
	cfg := policy.Default()
	cfg.Agent.MaxConnections = 64
	cfg.Agent.MaxEntries = 19500
	cfg.Agent.DefaultMaxEntries = 19500
	srv, err := agent.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "capd-bench")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	l, err := agent.Listen(sock)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		l.Close()
		srv.Close()
	}()
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/objects:objects"}, {Name: "/gc/heap/allocs:bytes"}}
	for j, n := range entryCounts {
		from := 0
		if j > 0 {
			from = entryCounts[j-1]
		}
		publishMemfds(b, cg, sock, from, n)
		time.Sleep(50 * time.Millisecond) // the agent's connection goroutine ends
		runtime.GC()
		metrics.Read(samples)
		heap = append(heap, int64(samples[0].Value.Uint64()))
		objs = append(objs, int64(samples[1].Value.Uint64()))
		allocs = append(allocs, int64(samples[2].Value.Uint64()))
	}
	return heap, objs, allocs
}

// publishMemfds publishes unpinned memfd entries m<from> to m<to-1> to the
// agent at sock from a process in cg (the test binary in the
// publish-memfds role), which exits when done.
func publishMemfds(b *testing.B, cg *testutil.Cgroup, sock string, from, to int) {
	if from == to {
		return
	}
	cmd := cg.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CAPD_TEST_ROLE=publish-memfds", "CAPD_SOCKET="+sock,
		"CAPD_TEST_FROM="+strconv.Itoa(from), "CAPD_TEST_TO="+strconv.Itoa(to))
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("publish m%d..m%d: %v\n%s", from, to-1, err, out)
	}
}

// publishMemfdsRole is the publish-memfds role: it publishes a fresh memfd
// under each name m$CAPD_TEST_FROM to m($CAPD_TEST_TO - 1).
func publishMemfdsRole() int {
	from, _ := strconv.Atoi(os.Getenv("CAPD_TEST_FROM"))
	to, _ := strconv.Atoi(os.Getenv("CAPD_TEST_TO"))
	c, err := client.Dial(os.Getenv("CAPD_SOCKET"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	for i := from; i < to; i++ {
		fd, err := linux.MemfdCreate("bench")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		f := os.NewFile(uintptr(fd), "memfd")
		err = c.Publish("m"+strconv.Itoa(i), f, nil)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "publish m%d: %v\n", i, err)
			return 1
		}
	}
	return 0
}

// s6Holder is an s6-fdholderd that lets root store any id.
type s6Holder struct {
	cmd    *exec.Cmd
	socket string
}

func startS6(b *testing.B, daemon string) *s6Holder {
	dir, err := os.MkdirTemp("", "capd-s6")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	rules := filepath.Join(dir, "rules", "uid", "0")
	if err := os.MkdirAll(filepath.Join(rules, "env"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rules, "allow"), nil, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rules, "env", "S6_FDHOLDER_STORE_REGEX"), []byte("^m\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	h := &s6Holder{socket: filepath.Join(dir, "s")}
	maxfds := entryCounts[len(entryCounts)-1] + 16
	h.cmd = exec.Command(daemon, "-1", "-v", "0", "-n", strconv.Itoa(maxfds), "-i", filepath.Join(dir, "rules"), h.socket)
	ready, err := h.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var stderr bytes.Buffer
	h.cmd.Stderr = &stderr
	if err := h.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(h.stop)
	if _, err := bufio.NewReader(ready).ReadString('\n'); err != nil {
		b.Fatalf("s6-fdholder-daemon did not get ready: %v\n%s", err, &stderr)
	}
	return h
}

// store stores fresh memfds under the ids m<from> to m<to-1>, one
// s6-fdholder-store each.
func (h *s6Holder) store(b *testing.B, from, to int) {
	for i := from; i < to; i++ {
		fd, err := linux.MemfdCreate("bench")
		if err != nil {
			b.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "memfd")
		cmd := exec.Command("s6-fdholder-store", h.socket, "m"+strconv.Itoa(i))
		cmd.Stdin = f
		out, err := cmd.CombinedOutput()
		f.Close()
		if err != nil {
			b.Fatalf("s6-fdholder-store m%d: %v\n%s", i, err, out)
		}
	}
}

func (h *s6Holder) stop() {
	if h.cmd.ProcessState == nil {
		h.cmd.Process.Kill()
		h.cmd.Wait()
	}
}

// vmRSS returns the resident set of process pid, in bytes.
func vmRSS(b *testing.B, pid int) int64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(st)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb * 1024
		}
	}
	b.Fatalf("/proc/%d/status has no VmRSS", pid)
	return 0
}
