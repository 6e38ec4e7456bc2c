package tests

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/testutil"
)

func (e *env) audit() *cliAudit {
	e.t.Helper()
	var rep cliAudit
	parseJSON(e.t, e.mustRun("", nil, "audit", "--json").stdout, &rep)
	return &rep
}

// holders returns the pids holding owner:name, and their uids and fds.
func holders(entries []cliAuditEntry, owner, name string) map[int]cliAuditHolder {
	out := map[int]cliAuditHolder{}
	for _, en := range entries {
		if en.Owner == owner && en.Name == name {
			for _, h := range en.Holders {
				out[h.PID] = h
			}
		}
	}
	return out
}

// audit finds exactly the processes holding an entry's open file
// description (not a process that opened the same file anew), says who
// they are and whether they are exposed, and after a revoke reports no
// stale copy it cannot confirm.
func TestAudit(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	f := tempFile(t, "secret")
	defer f.Close()
	// The publisher keeps its copy at fd 3 while it runs; a consumer as
	// uid 65534 holds an acquired copy.
	pub, cons := e.seedHolders(f, "30")
	// Another process opens the same file itself: same inode, another
	// open file description, not a copy.
	other := exec.Command("sleep", "30")
	g, _ := os.Open(f.Name())
	other.ExtraFiles = []*os.File{g}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	g.Close()
	defer func() { other.Process.Kill(); other.Wait() }()

	var h map[int]cliAuditHolder
	for deadline := time.Now().Add(5 * time.Second); ; {
		h = holders(e.audit().Entries, "rpm-ostreed.service", "zincati-fd")
		// The consumer holds its copy at 3 once capd acquire has exec'd
		// (before, capd itself holds it at another number).
		if len(h) >= 3 && h[cons.Process.Pid].FD == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// This test process holds the original too.
	if _, me := h[os.Getpid()]; len(h) != 3 || !me {
		t.Fatalf("holders %+v, want this process, the publisher %d and the consumer %d", h, pub.Process.Pid, cons.Process.Pid)
	}
	p, c := h[pub.Process.Pid], h[cons.Process.Pid]
	if !p.is("rpm-ostreed.service", 0) || p.FD != 3 || p.Exposed || p.Dumpable != nil {
		t.Errorf("publisher %+v", p)
	}
	if !c.is("zincati.service", 65534) || c.FD != 3 || !c.Exposed || c.Dumpable == nil || !*c.Dumpable {
		t.Errorf("consumer %+v", c)
	}
	if _, ok := h[other.Process.Pid]; ok {
		t.Error("a process that opened the same file anew was reported as a holder")
	}

	e.mustRun("rpm-ostreed.service", nil, "revoke", "zincati-fd")
	rep := e.audit()
	if len(holders(rep.Entries, "rpm-ostreed.service", "zincati-fd")) != 0 {
		t.Fatal("a revoked entry is still live")
	}
	// A regular file's stale copies cannot be told from the same file
	// opened anew once the agent's copy is closed (kcmp needs it): none is
	// reported, least of all the other opener (agent/audit_test.go checks
	// the kinds whose stale copies are known).
	if stale := holders(rep.Removed, "rpm-ostreed.service", "zincati-fd"); len(stale) != 0 {
		t.Fatalf("after revoke, unconfirmable stale holders reported: %+v", stale)
	}
	expectFail(t, e.runAs("", 65534, nil, "audit"), 4, "host administrator")
}

// BenchmarkAudit audits a host with 2,000 extra processes holding 10,000
// extra fds (5 each), with 10 entries on 5 files, every one held by every
// process. Baseline in the same run: a bare walk of /proc/*/fd stating
// every fd, in this process. Both are measured in wall time and in the CPU
// time they ran (the agent's threads, the walking thread), which the other
// work of a shared machine disturbs less.
func BenchmarkAudit(b *testing.B) { benchmarkAudit(b, 2000) }

// BenchmarkAuditFewHolders is BenchmarkAudit on a host where 20 of the
// 2,000 processes hold the entries' files and the others 5 files of their
// own (the same kinds, none an entry's), as most processes of a host hold
// none.
func BenchmarkAuditFewHolders(b *testing.B) { benchmarkAudit(b, 20) }

// benchmarkAudit audits 2,000 extra processes with 5 extra fds each, of
// which the first holders hold the 5 files of the 10 entries.
func benchmarkAudit(b *testing.B, holders int) {
	testutil.RequireRoot(b)
	e := newEnv(b, "[[grant]]\nconsumer = \"cgroup:/\"\nacquire = [\"cgroup:/:*\"]\n")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	files := make([]*os.File, 5)
	for i := range files {
		files[i] = tempFile(b, strconv.Itoa(i))
		defer files[i].Close()
		if err := c.Publish("e"+strconv.Itoa(i), files[i], nil); err != nil {
			b.Fatal(err)
		}
	}
	var others []*os.File
	for i := 0; holders < 2000 && i < len(files); i++ {
		others = append(others, tempFile(b, "other"+strconv.Itoa(i)))
		defer others[i].Close()
	}
	for i := 5; i < 10; i++ {
		if err := c.Publish("e"+strconv.Itoa(i), files[0], &client.PublishOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}()
	for i := 0; i < 2000; i++ {
		p := exec.Command("sleep", "600")
		p.ExtraFiles = files
		if i >= holders {
			p.ExtraFiles = others
		}
		if err := p.Start(); err != nil {
			b.Fatalf("start process %d: %v", i, err)
		}
		procs = append(procs, p)
	}
	agent := e.agent.Cmd.Process.Pid
	var audit, walk, auditCPU, walkCPU []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cpu := cpuTime(b, agent)
		start := time.Now()
		rep, err := c.Audit()
		if err != nil {
			b.Fatal(err)
		}
		audit = append(audit, time.Since(start))
		auditCPU = append(auditCPU, cpuTime(b, agent)-cpu)
		if rep.Processes < 2000 || rep.FDs < 10000 {
			b.Fatalf("audited %d processes, %d fds", rep.Processes, rep.FDs)
		}
		if n := len(rep.Entries[0].Holders); n < holders {
			b.Fatalf("%d holders of e0, want at least %d", n, holders)
		}
		w, wcpu := timedBareWalk(b)
		walk, walkCPU = append(walk, w), append(walkCPU, wcpu)
	}
	b.StopTimer()
	for _, d := range [][]time.Duration{audit, walk, auditCPU, walkCPU} {
		slices.Sort(d)
	}
	b.ReportMetric(float64(audit[len(audit)/2].Milliseconds()), "audit-ms")
	b.ReportMetric(float64(audit[len(audit)-1].Milliseconds()), "audit-max-ms")
	b.ReportMetric(float64(walk[len(walk)/2].Milliseconds()), "bare-walk-ms")
	b.ReportMetric(float64(auditCPU[len(auditCPU)/2].Milliseconds()), "audit-cpu-ms")
	b.ReportMetric(float64(walkCPU[len(walkCPU)/2].Milliseconds()), "bare-walk-cpu-ms")
}

// cpuTime returns how long the threads of process pid have run on a CPU
// (the first field of each /proc/PID/task/TID/schedstat).
func cpuTime(b *testing.B, pid int) time.Duration {
	b.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tids, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	var sum time.Duration
	for _, tid := range tids {
		d, err := schedstat(dir + tid.Name() + "/schedstat")
		if err != nil {
			b.Fatal(err)
		}
		sum += d
	}
	return sum
}

func schedstat(path string) (time.Duration, error) {
	s, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f, _, _ := strings.Cut(string(s), " ")
	ns, err := strconv.ParseInt(f, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return time.Duration(ns), nil
}

// timedBareWalk runs bareWalk on a thread of its own and returns its wall
// and CPU time.
func timedBareWalk(b *testing.B) (wall, cpu time.Duration) {
	b.Helper()
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var before, after time.Duration
		if before, err = schedstat("/proc/thread-self/schedstat"); err != nil {
			return
		}
		start := time.Now()
		bareWalk()
		wall = time.Since(start)
		after, err = schedstat("/proc/thread-self/schedstat")
		cpu = after - before
	}()
	<-done
	if err != nil {
		b.Fatal(err)
	}
	return wall, cpu
}

func bareWalk() (n int) {
	d, _ := os.Open("/proc")
	names, _ := d.Readdirnames(-1)
	d.Close()
	var st unix.Stat_t
	for _, name := range names {
		if _, err := strconv.Atoi(name); err != nil {
			continue
		}
		dfd, err := unix.Open("/proc/"+name+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		f := os.NewFile(uintptr(dfd), "")
		fds, _ := f.Readdirnames(-1)
		for _, fd := range fds {
			if unix.Fstatat(dfd, fd, &st, 0) == nil {
				n++
			}
		}
		f.Close()
	}
	return n
}

// revoke --shutdown reaches the copies already handed out for a socket
// entry: a consumer blocked reading its copy sees end-of-file. Other kinds
// are refused and stay published.
func TestRevokeShutdown(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	defer mine.Close()
	e.mustRun("rpm-ostreed.service", []*os.File{theirs}, "publish", "zincati-fd", "--fd", "3")
	theirs.Close()
	e.publishFile("rpm-ostreed.service", "foo-op-fd", "x")
	cons := e.cgs["zincati.service"].Command(capd, "acquire", "rpm-ostreed.service:zincati-fd", "--", "sh", "-c", "cat <&3; echo eof-seen")
	cons.Env = e.agent.Env()
	out := &testutil.LogBuffer{}
	cons.Stdout = out
	if err := cons.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cons.Process.Kill(); cons.Wait() }()
	mine.Write([]byte("hello\n"))
	for deadline := time.Now().Add(5 * time.Second); out.String() != "hello\n"; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("consumer output %q", out)
		}
	}
	expectFail(t, e.run("rpm-ostreed.service", nil, "revoke", "--shutdown", "foo-op-fd"), 1, "not a socket")
	e.mustRun("rpm-ostreed.service", nil, "revoke", "--shutdown", "zincati-fd")
	done := make(chan error, 1)
	go func() { done <- cons.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the consumer's copy still works after revoke --shutdown")
	}
	if out.String() != "hello\neof-seen\n" {
		t.Fatalf("consumer output %q", out)
	}
	if _, err := mine.Write([]byte("x")); err == nil {
		t.Error("the publisher's peer end can still write into the shut down socket")
	}
	e.waitNames("", "rpm-ostreed.service:foo-op-fd")
}

// capd acquire --private-proc gives the consumer a /proc that hides other
// users' processes, which survives exec; audit sees it.
func TestAcquirePrivateProc(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "x")
	cons := e.cgs["zincati.service"].Command(capd, "acquire", "--private-proc", "rpm-ostreed.service:zincati-fd", "--",
		"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c",
		`test -e /proc/1; echo "see-1: $?"; exec sleep 30`)
	cons.Env = e.agent.Env()
	out := &testutil.LogBuffer{}
	cons.Stdout, cons.Stderr = out, out
	if err := cons.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cons.Process.Kill(); cons.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), "see-1:"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("consumer output %q", out)
		}
	}
	if !strings.Contains(out.String(), "see-1: 1") {
		t.Fatalf("uid 65534 under --private-proc sees pid 1: %q", out)
	}
	h := holders(e.audit().Entries, "rpm-ostreed.service", "zincati-fd")[cons.Process.Pid]
	if h.PID == 0 || !h.ProcHidden || !h.Exposed {
		t.Fatalf("audit of the consumer: %+v", h)
	}
}

// seedHolders runs the seed pair for the test's life: rpm-ostreed.service
// publishes f as zincati-fd (keeping its copy at fd 3) and zincati.service
// acquires it as uid 65534; each then sleeps for secs. It returns them
// once the entry is published and the consumer started.
func (e *env) seedHolders(f *os.File, secs string) (pub, cons *exec.Cmd) {
	e.t.Helper()
	pub = e.cgs["rpm-ostreed.service"].Command("sh", "-c", `"$0" publish zincati-fd --fd 3 && exec sleep `+secs, capd)
	pub.Env, pub.ExtraFiles = e.agent.Env(), []*os.File{f}
	if err := pub.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { pub.Process.Kill(); pub.Wait() })
	e.waitNames("", "rpm-ostreed.service:zincati-fd")
	cons = e.cgs["zincati.service"].Command(capd, "acquire", "rpm-ostreed.service:zincati-fd", "--", "sleep", secs)
	cons.Env = e.agent.Env()
	cons.SysProcAttr.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
	if err := cons.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cons.Process.Kill(); cons.Wait() })
	return pub, cons
}
