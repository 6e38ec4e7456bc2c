package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

// runTimeout is run with a deadline; ok is false if capd had not exited by
// then (it is killed).
func (e *env) runTimeout(d time.Duration, unit string, args ...string) (r result, ok bool) {
	e.t.Helper()
	cmd := exec.Command(capd, args...)
	if unit != "" {
		cmd = e.cgs[unit].Command(capd, args...)
	}
	cmd.Env = e.agent.Env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("run capd %v: %v", args, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return result{stdout: out.String(), stderr: errb.String()}, false
	}
	r = result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run capd %v: %v", args, err)
	}
	return r, true
}

// auditWithin runs capd audit --json as root and fails the test if it does
// not answer within d.
func (e *env) auditWithin(d time.Duration, why string) *cliAudit {
	e.t.Helper()
	start := time.Now()
	r, ok := e.runTimeout(d, "", "audit", "--json")
	if !ok {
		e.t.Fatalf("capd audit did not finish within %v %s: it waits on a file system call\nagent log:\n%s", d, why, e.agent.Log)
	}
	if r.code != 0 {
		e.t.Fatalf("capd audit: exit %d: %s", r.code, r.stderr)
	}
	e.t.Logf("capd audit answered in %v %s", time.Since(start).Round(time.Millisecond), why)
	var rep cliAudit
	parseJSON(e.t, r.stdout, &rep)
	return &rep
}

// threadState is one thread of a process: its state letter, the system
// call it is blocked in (-1: none) and where it waits (wchan).
type threadState struct {
	tid, syscall int
	state        byte
	wchan        string
}

func threads(pid int) []threadState {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	ents, _ := os.ReadDir(dir)
	var out []threadState
	for _, e := range ents {
		ts := threadState{syscall: -1}
		ts.tid, _ = strconv.Atoi(e.Name())
		b, err := os.ReadFile(dir + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) {
			ts.state = b[i+2]
		}
		if b, err := os.ReadFile(dir + e.Name() + "/syscall"); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				if n, err := strconv.Atoi(f[0]); err == nil {
					ts.syscall = n
				}
			}
		}
		if b, err := os.ReadFile(dir + e.Name() + "/wchan"); err == nil {
			ts.wchan = string(b)
		}
		out = append(out, ts)
	}
	return out
}

// inFUSEClose reports whether the thread is in close(2) waiting for a FUSE
// server's answer.
func (ts threadState) inFUSEClose() bool {
	return ts.syscall == unix.SYS_CLOSE && ts.wchan == "request_wait_answer"
}

// A process (not the agent) holds a file on a FUSE mount whose server has
// stopped answering, and a copy of an entry. capd audit must still finish,
// and report that entry's holders, then the stale copies after a revoke:
// it must not stat the fds it looks at (a stat of the FUSE file waits for
// the server).
func TestAuditWithStoppedFUSE(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	fuse := testutil.MountFUSE(t)
	held := fuse.Create(t, "held", "on fuse")
	f := tempFile(t, "secret")
	defer f.Close()
	pub, cons := e.seedHolders(f, "600")
	// The FUSE holder: the file on the mount at fd 3, the entry's open
	// file description at fd 4.
	ff, err := os.Open(held)
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sleep", "600")
	holder.ExtraFiles = []*os.File{ff, f}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	ff.Close()
	stat := make(chan error, 1)
	defer func() {
		// Resume first: the holder's exit closes its FUSE file, and
		// that waits for the server.
		fuse.Resume(t)
		<-stat
		holder.Process.Kill()
		holder.Wait()
	}()
	want := map[int]int{os.Getpid(): int(f.Fd()), pub.Process.Pid: 3, cons.Process.Pid: 3, holder.Process.Pid: 4}
	for deadline := time.Now().Add(5 * time.Second); len(holders(e.audit().Entries, "rpm-ostreed.service", "zincati-fd")) < len(want); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the consumer's copy did not show up in audit within 5s")
		}
	}

	fuse.Stop(t)
	go func() {
		var st unix.Stat_t
		stat <- unix.Stat("/proc/"+strconv.Itoa(holder.Process.Pid)+"/fd/3", &st)
	}()
	select {
	case err := <-stat:
		stat <- err
		t.Fatalf("a stat of the FUSE file returned (%v) with its server stopped: the test proves nothing", err)
	case <-time.After(300 * time.Millisecond):
	}

	h := holders(e.auditWithin(20*time.Second, "while a process holds a file on a stopped FUSE server").Entries, "rpm-ostreed.service", "zincati-fd")
	if len(h) != len(want) {
		t.Errorf("holders %+v, want pids and fds %v", h, want)
	}
	for pid, fd := range want {
		if h[pid].FD != fd {
			t.Errorf("holder %d: %+v, want fd %d", pid, h[pid], fd)
		}
	}
	if p := h[pub.Process.Pid]; !p.is("rpm-ostreed.service", 0) || p.Exposed || p.Dumpable != nil {
		t.Errorf("publisher %+v", p)
	}
	if c := h[cons.Process.Pid]; !c.is("zincati.service", 65534) || !c.Exposed || c.Dumpable == nil || !*c.Dumpable {
		t.Errorf("consumer %+v", c)
	}

	// After a revoke audit still answers; a regular file's stale copies
	// cannot be confirmed, so none is reported.
	e.mustRun("rpm-ostreed.service", nil, "revoke", "zincati-fd")
	if stale := holders(e.auditWithin(20*time.Second, "after a revoke, with the FUSE server stopped").Removed, "rpm-ostreed.service", "zincati-fd"); len(stale) != 0 {
		t.Errorf("unconfirmable stale holders reported: %+v", stale)
	}
}

// An entry whose file is on a FUSE mount with a stopped server is dropped
// (its owner's cgroup empties) and the agent's close(2) of it waits for the
// server. Meanwhile another owner's (another uid's) dropped entry must be
// closed too (the peer of its socket reads end-of-file), a revoke and an
// audit must answer, and SIGTERM must stop the agent within its shutdown
// bound (5 s).
//
// This is the attack the bounded closer (internal/closer) answers: with a
// single closing goroutine, the other owner's close waits behind the stuck
// one, and shutdown waits for that goroutine.
func TestStuckCloseDelaysNoOther(t *testing.T) {
	e := newEnv(t, seedPolicy, "fusepub.service", "other.service", "rev.service")
	agentPid := e.agent.Cmd.Process.Pid
	fuse := testutil.MountFUSE(t) // its cleanup, before the agent's, ends the wait
	ff, err := os.Open(fuse.Create(t, "held", "x"))
	if err != nil {
		t.Fatal(err)
	}
	e.mustRun("fusepub.service", []*os.File{ff}, "publish", "fuse-file", "--fd", "3")
	ff.Close()                                                                                         // with the server running: the agent now holds the only copy
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0) // pollable: read deadlines work
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(sp[0]), "mine"), os.NewFile(uintptr(sp[1]), "theirs")
	defer mine.Close()
	// Another uid: closes are serialized per owner uid, so that one
	// owner's stuck closes hold one thread; another uid's must not wait.
	if r := e.runAs("other.service", 65534, []*os.File{theirs}, "publish", "sock", "--fd", "3"); r.code != 0 {
		t.Fatalf("publish as uid 65534: exit %d: %s", r.code, r.stderr)
	}
	theirs.Close() // the agent's copy is the last: its close ends the stream
	e.publishFile("rev.service", "rev-me", "x")
	e.waitNames("", "fusepub.service:fuse-file other.service:sock rev.service:rev-me")

	fuse.Stop(t)
	e.cgs["fusepub.service"].Kill(t)
	gone := func(ref string, within time.Duration) bool {
		for deadline := time.Now().Add(within); ; time.Sleep(20 * time.Millisecond) {
			r, ok := e.runTimeout(5*time.Second, "", "list", "--json")
			if !ok {
				t.Errorf("capd list did not answer within 5s")
				return false
			}
			var l cliList
			if err := parseJSONErr(r.stdout, &l); err != nil {
				t.Fatalf("list: %v: %q", err, r.stdout)
			}
			listed := false
			for _, en := range l.Entries {
				listed = listed || en.Owner+":"+en.Name == ref
			}
			if !listed {
				return true
			}
			if time.Now().After(deadline) {
				return false
			}
		}
	}
	if !gone("fusepub.service:fuse-file", 10*time.Second) {
		t.Fatalf("fusepub.service:fuse-file still listed 10s after its cgroup emptied\nagent log:\n%s", e.agent.Log)
	}
	stuck := false
	for deadline := time.Now().Add(5 * time.Second); !stuck && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, th := range threads(agentPid) {
			stuck = stuck || th.inFUSEClose()
		}
	}
	if !stuck {
		t.Fatalf("no agent thread waits in close(2) for the FUSE server after the drop: the test proves nothing (threads %+v)", threads(agentPid))
	}

	e.cgs["other.service"].Kill(t)
	if !gone("other.service:sock", 10*time.Second) {
		t.Errorf("other.service:sock still listed 10s after its cgroup emptied, while another owner's close is stuck")
	}
	mine.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := mine.Read(b[:]); !errors.Is(err, io.EOF) {
		t.Errorf("the peer of other.service:sock read %v, not end-of-file, 10s after the entry was dropped: the agent's close of it waits behind the stuck FUSE close", err)
	}
	if r, ok := e.runTimeout(5*time.Second, "rev.service", "revoke", "rev-me"); !ok || r.code != 0 {
		t.Errorf("revoke while a close is stuck: answered %v, exit %d %s", ok, r.code, r.stderr)
	}
	e.auditWithin(20*time.Second, "while the agent's close of a FUSE file is stuck")

	start := time.Now()
	e.agent.Cmd.Process.Signal(unix.SIGTERM)
	// The agent exits, but a thread stuck in a FUSE flush cannot: the
	// process is reaped once the server answers (the mount's cleanup).
	// Wait until nothing else of it runs.
	var left []threadState
	for deadline := start.Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		left = left[:0]
		for _, th := range threads(agentPid) {
			if th.state != 'Z' && th.state != 'X' && !th.inFUSEClose() {
				left = append(left, th)
			}
		}
		if len(left) == 0 {
			t.Logf("agent stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("agent still running 10s after SIGTERM (its shutdown bound is 5s): threads %s\nagent log:\n%s", fmtThreads(left), e.agent.Log)
			break
		}
	}
}

func fmtThreads(ts []threadState) string {
	var s []string
	for _, t := range ts {
		s = append(s, fmt.Sprintf("%d:%c/syscall %d/%s", t.tid, t.state, t.syscall, t.wchan))
	}
	return strings.Join(s, " ")
}
