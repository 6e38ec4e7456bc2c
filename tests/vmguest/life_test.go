//go:build vmguest

package vmguest

import (
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
)

// TestOwnerDeath: an unpinned entry dies with its owner's cgroup, and the
// kernel then refuses its holders too.
func TestOwnerDeath(t *testing.T) {
	timed(t)
	enforced(t)
	mem := memfd(t, "own1", "owned")
	pub := inCgroup("own", capd, "publish", "own1=3", "--", "sleep", "600")
	pub.ExtraFiles = []*os.File{mem}
	var stderr strings.Builder
	pub.Stderr = &stderr
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { pub.Wait(); close(exited) }()
	t.Cleanup(func() { pub.Process.Kill(); <-exited })
	mem.Close() // the publisher's is the only copy but the agent's
	c := dial(t)
	listed := func() bool {
		ents, err := c.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Owner == "cgroup:/own" && e.Name == "own1" {
				return true
			}
		}
		return false
	}
	for start := time.Now(); !listed(); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("own1 not published in 10 s: %s", stderr.String())
		}
	}
	a := acquireIn(t, "a", "cgroup:/own:own1")
	wantRead(t, "a while the owner lives", a.File, "owned")
	pub.Process.Kill()
	<-exited
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := preadErr(a.File)
		if err != nil {
			wantEPERM(t, "a's read once the owner is gone", err)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a still reads 10 s after the owner's cgroup emptied")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if listed() {
		t.Error("the dead owner's entry is still listed")
	}
}

// TestHandoffKeepsEnforcement: a SIGUSR2 hand-off (a new agent program in
// the same process) passes the programs on: revocations made before stay
// enforced, and the new program enforces new ones.
func TestHandoffKeepsEnforcement(t *testing.T) {
	timed(t)
	enforced(t)
	c := dial(t)
	mem := memfd(t, "ho1", "handed")
	if err := c.Publish("ho1", mem, &client.PublishOptions{PerConsumer: true, Pin: true}); err != nil {
		t.Fatal(err)
	}
	a := acquireIn(t, "a", "cgroup:/pub:ho1")
	b := acquireIn(t, "b", "cgroup:/pub:ho1")
	if err := c.RevokeGrant("", "ho1", grantID(t, c, "ho1", "cgroup:/a", a.File)); err != nil {
		t.Fatal(err)
	}
	_, err := preadErr(a.File)
	wantEPERM(t, "a's read after its grant's revoke", err)
	pid, err := sup.lastReady()
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(agentLog)
	if err := unix.Kill(pid, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		log, _ := os.ReadFile(agentLog)
		if n := strings.Count(string(log), "restored entries from the previous agent process"); n > strings.Count(string(before), "restored entries from the previous agent process") {
			if !strings.Contains(string(log[len(before):]), "adopted from the previous agent process") {
				t.Errorf("the handed-off agent did not adopt the BPF LSM state:\n%s", log[len(before):])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hand-off in 30 s:\n%s", log[len(before):])
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err = preadErr(a.File)
	wantEPERM(t, "a's read after the hand-off", err)
	wantRead(t, "b's read after the hand-off", b.File, "handed")
	c2 := dial(t)
	if err := c2.RevokeGrant("", "ho1", grantID(t, c2, "ho1", "cgroup:/b", b.File)); err != nil {
		t.Fatal(err)
	}
	_, err = preadErr(b.File)
	wantEPERM(t, "b's read after the handed-off agent revoked it", err)
	if st := status(t); st.Enforcement != "enforced" || st.Lost != 0 {
		t.Errorf("status after the hand-off: %+v", st)
	}
	c2.Revoke("ho1")
}
