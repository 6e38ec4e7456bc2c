package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/testutil"
)

// BenchmarkIdleConnections measures what an idle client connection costs
// the agent: a fresh capd agent process per iteration, then N clients that
// each ask WHOAMI once (so that the agent has admitted and served them) and
// stay connected without asking anything more. The agent's thread count
// and resident memory (/proc/PID/status Threads and VmRSS) are read after
// one served connection, and again with the N connections idle; the
// metrics are the threads and kB the N connections added, per connection.
// ns/op is meaningless here.
func BenchmarkIdleConnections(b *testing.B) {
	for _, n := range []int{100, 400} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) { benchIdle(b, n) })
	}
}

func benchIdle(b *testing.B, n int) {
	testutil.RequireRoot(b)
	config := fmt.Sprintf("[agent]\nmax_connections = %d\nmax_connections_per_uid = %d\n", n+64, n+64)
	var base, idle procStatus
	for range b.N {
		a := testutil.StartAgent(b, capd, config)
		pid := a.Cmd.Process.Pid
		c, err := client.Dial(a.Socket)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Whoami(); err != nil {
			b.Fatal(err)
		}
		c.Close()
		before := settledStatus(b, pid)
		clients := make([]*client.Client, 0, n)
		for range n {
			c, err := client.Dial(a.Socket)
			if err != nil {
				b.Fatal(err)
			}
			clients = append(clients, c)
			if _, err := c.Whoami(); err != nil {
				b.Fatal(err)
			}
		}
		after := settledStatus(b, pid)
		for _, c := range clients {
			c.Close()
		}
		a.Stop()
		base.add(before)
		idle.add(after)
	}
	per := float64(b.N * n)
	b.ReportMetric(float64(base.threads)/float64(b.N), "threads-base")
	b.ReportMetric(float64(idle.threads)/float64(b.N), "threads-idle")
	b.ReportMetric(float64(idle.threads-base.threads)/per, "threads/conn")
	b.ReportMetric(float64(idle.rssKB-base.rssKB)/per, "rss-kB/conn")
}

// procStatus is what BenchmarkIdleConnections reads of /proc/PID/status.
type procStatus struct{ threads, rssKB int }

func (s *procStatus) add(o procStatus) { s.threads += o.threads; s.rssKB += o.rssKB }

// settledStatus reads pid's status once its thread count has not changed
// for 200 ms (the Go runtime starts a thread for a goroutine blocked in a
// system call only after sysmon notices it, up to 10 ms later).
func settledStatus(b *testing.B, pid int) procStatus {
	b.Helper()
	last := readStatus(b, pid)
	deadline := time.Now().Add(10 * time.Second)
	for stable := time.Now(); time.Since(stable) < 200*time.Millisecond; {
		if time.Now().After(deadline) {
			b.Fatalf("agent %d: thread count still changing after 10 s", pid)
		}
		time.Sleep(20 * time.Millisecond)
		s := readStatus(b, pid)
		if s.threads != last.threads {
			stable = time.Now()
		}
		last = s
	}
	return last
}

func readStatus(b *testing.B, pid int) procStatus {
	b.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	var s procStatus
	var found int
	sc := bufio.NewScanner(bytes.NewReader(st))
	for sc.Scan() {
		k, v, _ := bytes.Cut(sc.Bytes(), []byte(":"))
		f := bytes.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch string(k) {
		case "Threads":
			s.threads, err = strconv.Atoi(string(f[0]))
			found++
		case "VmRSS":
			s.rssKB, err = strconv.Atoi(string(f[0])) // in kB
			found++
		}
		if err != nil {
			b.Fatalf("/proc/%d/status: %s: %v", pid, k, err)
		}
	}
	if found != 2 {
		b.Fatalf("/proc/%d/status has no Threads or VmRSS:\n%s", pid, st)
	}
	return s
}
