package tests

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capd-dev/capd/client"
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
