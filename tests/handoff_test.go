package tests

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/testutil"
)

// SIGUSR2 restarts the agent in place without systemd: same pid, every
// entry kept (pinned, unpinned, with a TTL), lifecycle and expiry still
// working in the new process, and a client on a persistent connection sees
// at most one failed request.
func TestHandoffWithoutSystemd(t *testing.T) {
	e := newEnv(t, seedPolicy+"\n[[grant]]\nconsumer = \"cgroup:/\"\nacquire = [\"rpm-ostreed.service:*\", \"zincati.service:*\"]\n",
		"rpm-ostreed.service", "zincati.service")
	e.publishFile("rpm-ostreed.service", "pinned", "p", "--pin")
	e.publishFile("rpm-ostreed.service", "timed", "t", "--ttl", "3s")
	e.publishFile("zincati.service", "unpinned", "u")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	acquire := func(owner, name string) error {
		fd, err := c.AcquireFD(owner, name)
		if err == nil {
			os.NewFile(uintptr(fd), "").Close()
		}
		return err
	}
	if err := acquire("rpm-ostreed.service", "pinned"); err != nil {
		t.Fatal(err)
	}

	pid := e.agent.Cmd.Process.Pid
	before := strings.Count(e.agent.Log.String(), "restored entries from the previous agent process")
	if err := e.agent.Cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	e.agent.WaitLog(t, "restored entries from the previous agent process\" entries=3", before)
	if e.agent.Cmd.ProcessState != nil || e.agent.Cmd.Process.Pid != pid {
		t.Fatal("the agent process changed")
	}
	failures := 0
	for _, ref := range [][2]string{{"rpm-ostreed.service", "pinned"}, {"rpm-ostreed.service", "timed"}, {"zincati.service", "unpinned"}} {
		err := acquire(ref[0], ref[1])
		if err != nil && failures == 0 {
			failures++
			err = acquire(ref[0], ref[1])
		}
		if err != nil {
			t.Fatalf("acquire %s:%s after the hand-off: %v\nagent log:\n%s", ref[0], ref[1], err, e.agent.Log)
		}
	}
	e.waitNames("", "rpm-ostreed.service:pinned rpm-ostreed.service:timed zincati.service:unpinned")
	// Lifecycle and expiry live on in the new process.
	e.cgs["zincati.service"].Kill(t)
	deadline := time.Now().Add(10 * time.Second)
	for e.names("") != "rpm-ostreed.service:pinned" {
		if time.Now().After(deadline) {
			t.Fatalf("after the hand-off, entries left: %q\nagent log:\n%s", e.names(""), e.agent.Log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := acquire("zincati.service", "unpinned"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("dropped entry: %v", err)
	}
}

// Two owners publish around two hand-offs: every entry comes back with its
// own file, and the agent holds no fd that no entry owns (stored-fd names
// are unique for the store's whole life; issue: the second hand-off lost
// half the entries and handed one owner's file to another).
func TestRepeatedHandoffKeepsEveryEntry(t *testing.T) {
	e := newEnv(t, "[[grant]]\nconsumer = \"cgroup:/\"\nacquire = [\"own-a.service:*\", \"own-b.service:*\"]\n",
		"own-a.service", "own-b.service")
	handoff := func() {
		t.Helper()
		before := strings.Count(e.agent.Log.String(), "agent serving")
		if err := e.agent.Cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		e.agent.WaitLog(t, "agent serving", before)
	}
	want := map[string]string{}
	publish := func(owner, prefix string) {
		for i := 1; i <= 5; i++ {
			name := prefix + strconv.Itoa(i)
			e.publishFile(owner, name, owner+"/"+name, "--pin")
			want[owner+":"+name] = owner + "/" + name
		}
	}
	base, err := testutil.CountFDs(e.agent.Cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	publish("own-a.service", "A")
	handoff()
	publish("own-b.service", "B")
	handoff()
	handoff()
	for ref, content := range want {
		r := e.run("", nil, "acquire", ref, "--", "cat", "/proc/self/fd/3")
		if r.code != 0 || r.stdout != content {
			t.Errorf("%s after the hand-offs: exit %d, %q (want %q)\n%s", ref, r.code, r.stdout, content, r.stderr)
		}
	}
	if n, _ := testutil.CountFDs(e.agent.Cmd.Process.Pid); n > base+len(want) {
		t.Errorf("the agent holds %d fds for %d entries, %d before any", n, len(want), base)
	}
	if strings.Contains(e.agent.Log.String(), "level=WARN") || strings.Contains(e.agent.Log.String(), "level=ERROR") {
		t.Errorf("the hand-offs warned:\n%s", e.agent.Log)
	}
}

// SIGUSR2 arriving while a new agent process starts (between execve and its
// signal handlers) waits for it instead of killing it, and the store with
// it (issue: a second SIGUSR2 a few ms after the first killed the agent).
func TestSIGUSR2DuringStartIsKept(t *testing.T) {
	e := newEnv(t, "[[grant]]\nconsumer = \"cgroup:/\"\nacquire = [\"own-a.service:*\"]\n", "own-a.service")
	e.publishFile("own-a.service", "kept", "still here", "--pin")
	p := e.agent.Cmd.Process
	for i := range 10 {
		before := strings.Count(e.agent.Log.String(), "agent serving")
		p.Signal(syscall.SIGUSR2)
		time.Sleep(time.Duration(2+i%7) * time.Millisecond)
		p.Signal(syscall.SIGUSR2)
		e.agent.WaitLog(t, "agent serving", before)
		if e.agent.Cmd.ProcessState != nil {
			t.Fatalf("the agent died: %v\n%s", e.agent.Cmd.ProcessState, e.agent.Log)
		}
	}
	// Let the last pending SIGUSR2 play out.
	for n := -1; n != strings.Count(e.agent.Log.String(), "agent serving"); time.Sleep(500 * time.Millisecond) {
		n = strings.Count(e.agent.Log.String(), "agent serving")
	}
	if r := e.run("", nil, "acquire", "own-a.service:kept", "--", "cat", "/proc/self/fd/3"); r.code != 0 || r.stdout != "still here" {
		t.Fatalf("after the hand-offs: exit %d %q %s\n%s", r.code, r.stdout, r.stderr, e.agent.Log)
	}
}
