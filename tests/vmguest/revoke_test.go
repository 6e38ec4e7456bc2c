//go:build vmguest

package vmguest

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
)

// TestPerConsumerRevoke: revoking a's grant of an entry published per
// consumer makes every operation on a's open file description fail for
// everyone, and a reopen through /proc too; b's grant, the publisher's
// own file and unrelated files keep working. Revoking the entry then
// takes b's.
func TestPerConsumerRevoke(t *testing.T) {
	timed(t)
	truncate := enforced(t)
	c := dial(t)
	mem := memfd(t, "cfg1", "config v1")
	if err := c.Publish("cfg1", mem, &client.PublishOptions{PerConsumer: true}); err != nil {
		t.Fatal(err)
	}
	a := acquireIn(t, "a", "cgroup:/pub:cfg1")
	b := acquireIn(t, "b", "cgroup:/pub:cfg1")
	wantRead(t, "a before revoke", a.File, "config v1")
	wantRead(t, "b before revoke", b.File, "config v1")
	other := memfd(t, "other", "unrelated")
	devnull, err := os.OpenFile("/dev/null", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()

	if err := c.RevokeGrant("", "cfg1", grantID(t, c, "cfg1", "cgroup:/a", a.File)); err != nil {
		t.Fatal(err)
	}
	fd := int(a.Fd())
	buf := make([]byte, 8)
	_, err = unix.Read(fd, buf)
	wantEPERM(t, "read of a's revoked grant", err)
	_, err = unix.Write(fd, []byte("x"))
	wantEPERM(t, "write", err)
	_, err = unix.Pread(fd, buf, 0)
	wantEPERM(t, "pread", err)
	if m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED); err == nil {
		unix.Munmap(m)
		t.Error("mmap of a's revoked grant succeeded")
	} else {
		wantEPERM(t, "mmap", err)
	}
	_, err = unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
	wantEPERM(t, "ioctl FIONREAD", err)
	// To its own size: where the kernel lets it through (no file_truncate
	// hook before 6.2), b's and the publisher's reads below stay intact.
	if err := unix.Ftruncate(fd, int64(len("config v1"))); truncate {
		wantEPERM(t, "ftruncate", err)
	} else {
		t.Logf("ftruncate without the file_truncate hook (kernels before 6.2): %v (not enforced there)", err)
	}
	wantEPERM(t, "reopen of /proc/self/fd/N of a's revoked grant", reopen(a.File))

	wantRead(t, "b after a's revoke", b.File, "config v1")
	wantRead(t, "the publisher's own after a's revoke", mem, "config v1")
	wantRead(t, "an unrelated memfd", other, "unrelated")
	if _, err := devnull.Write([]byte("x")); err != nil {
		t.Errorf("write /dev/null: %v", err)
	}
	if err := reopen(other); err != nil {
		t.Errorf("reopen of an unrelated memfd: %v", err)
	}

	if err := c.Revoke("cfg1"); err != nil {
		t.Fatal(err)
	}
	_, err = preadErr(b.File)
	wantEPERM(t, "pread of b's grant after revoking the entry", err)
	_, err = preadErr(mem)
	wantEPERM(t, "pread of the publisher's own (the entry's description, not kept) after revoking the entry", err)
	wantRead(t, "an unrelated memfd after the entry's revoke", other, "unrelated")
}

// TestSocketRevoke: a socket entry is shared (one description for all):
// after its revoke, the holder can neither send nor receive on it nor
// pass it on.
func TestSocketRevoke(t *testing.T) {
	timed(t)
	enforced(t)
	c := dial(t)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	s0, s1 := os.NewFile(uintptr(sp[0]), "s0"), os.NewFile(uintptr(sp[1]), "s1")
	defer s0.Close()
	defer s1.Close()
	if err := c.Publish("sock2", s0, nil); err != nil {
		t.Fatal(err)
	}
	a := acquireIn(t, "a", "cgroup:/pub:sock2")
	fd := int(a.Fd())
	buf := make([]byte, 8)
	// Before: both ways work.
	if err := unix.Sendmsg(fd, []byte("x"), nil, nil, 0); err != nil {
		t.Fatalf("sendmsg before revoke: %v", err)
	}
	if n, err := unix.Read(sp[1], buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("peer read before revoke: %q, %v", buf[:n], err)
	}
	if _, err := unix.Write(sp[1], []byte("y")); err != nil {
		t.Fatal(err)
	}
	if n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0); err != nil || string(buf[:n]) != "y" {
		t.Fatalf("recvmsg before revoke: %q, %v", buf[:n], err)
	}

	if err := c.Revoke("sock2"); err != nil {
		t.Fatal(err)
	}
	err = unix.Sendmsg(fd, []byte("x"), nil, nil, 0)
	wantEPERM(t, "sendmsg on the holder's copy", err)
	if _, err := unix.Write(sp[1], []byte("z")); err != nil {
		t.Fatalf("write on the unrevoked peer: %v", err)
	}
	_, _, _, _, err = unix.Recvmsg(fd, buf, nil, unix.MSG_DONTWAIT)
	wantEPERM(t, "recvmsg on the holder's copy", err)

	// Passed on with SCM_RIGHTS: no fd arrives, MSG_CTRUNC says so.
	pass, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pass[0])
	defer unix.Close(pass[1])
	if err := unix.Sendmsg(pass[0], []byte("f"), unix.UnixRights(fd), nil, 0); err != nil {
		t.Logf("sending the revoked fd: %v (refused at send)", err)
	} else {
		oob := make([]byte, unix.CmsgSpace(4*4))
		_, oobn, flags, _, err := unix.Recvmsg(pass[1], buf, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
		if err != nil {
			t.Fatalf("recvmsg of the passed fd: %v", err)
		}
		var got []int
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if fds, err := unix.ParseUnixRights(&m); err == nil {
					got = append(got, fds...)
				}
			}
		}
		for _, f := range got {
			unix.Close(f)
		}
		if len(got) != 0 || flags&unix.MSG_CTRUNC == 0 {
			t.Errorf("SCM_RIGHTS of the revoked fd delivered %d fds, flags %#x; want none and MSG_CTRUNC", len(got), flags)
		} else {
			t.Logf("SCM_RIGHTS of the revoked fd: no fd, MSG_CTRUNC, as wanted")
		}
	}
	// Taken from the holder with pidfd_getfd.
	if nfd, err := unix.PidfdGetfd(a.Pidfd, 3, 0); err == nil {
		unix.Close(nfd)
		t.Error("pidfd_getfd of the holder's revoked fd 3 succeeded")
	} else {
		wantEPERM(t, "pidfd_getfd of the holder's fd 3", err)
	}
}

// TestTTLExpiry: an entry published with a TTL is revoked by the agent
// when it expires, and the kernel enforces that revoke on its holders.
func TestTTLExpiry(t *testing.T) {
	timed(t)
	enforced(t)
	c := dial(t)
	mem := memfd(t, "ttl3", "short-lived")
	published := time.Now()
	if err := c.Publish("ttl3", mem, &client.PublishOptions{TTL: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	a := acquireIn(t, "a", "cgroup:/pub:ttl3")
	if time.Since(published) < 2*time.Second {
		wantRead(t, "a before expiry", a.File, "short-lived")
	}
	deadline := published.Add(15 * time.Second)
	for {
		_, err := preadErr(a.File)
		if err != nil {
			wantEPERM(t, "pread after expiry", err)
			since := time.Since(published)
			t.Logf("a's read failed %v after publish (TTL 2s)", since.Round(time.Millisecond))
			if since < 2*time.Second {
				t.Errorf("revoked before the TTL ran out (%v)", since)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a still reads 15s after publish with TTL 2s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAgentKillRestart: revocations outlive a SIGKILL of the agent (the
// programs and maps stay in fdsup's fd store), the restarted agent adopts
// them, reports them in force, and enforces its own revokes.
func TestAgentKillRestart(t *testing.T) {
	timed(t)
	enforced(t)
	c := dial(t)
	mem := memfd(t, "cfg4", "config v4")
	if err := c.Publish("cfg4", mem, &client.PublishOptions{PerConsumer: true}); err != nil {
		t.Fatal(err)
	}
	a := acquireIn(t, "a", "cgroup:/pub:cfg4")
	b := acquireIn(t, "b", "cgroup:/pub:cfg4")
	if err := c.RevokeGrant("", "cfg4", grantID(t, c, "cfg4", "cgroup:/a", a.File)); err != nil {
		t.Fatal(err)
	}
	_, err := preadErr(a.File)
	wantEPERM(t, "a's read after its grant's revoke", err)
	wantRead(t, "b's read", b.File, "config v4")
	before := status(t)
	t.Logf("before the kill: %+v", before)

	from := sup.mark()
	pid, err := sup.lastReady()
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatalf("kill -9 the agent (pid %d): %v", pid, err)
	}
	if _, _, err := sup.waitEvent(from, "exit pid="+strconv.Itoa(pid)+" signal=SIGKILL", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// While no agent runs (or the next is starting): still denied.
	_, err = preadErr(a.File)
	wantEPERM(t, "a's read with the agent dead", err)
	line, idx, err := sup.waitEvent(from, "start pid=", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fdsup: %s", line)
	npid, err := sup.waitReady(idx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent %d killed; agent %d ready %v later", pid, npid, time.Since(killed).Round(time.Millisecond))

	if log, _ := os.ReadFile(agentLog); !strings.Contains(string(log), "adopted from the previous agent process") {
		t.Errorf("the restarted agent's log does not say it adopted the BPF LSM state:\n%s", log)
	}
	_, err = preadErr(a.File)
	wantEPERM(t, "a's read after the restart", err)
	wantRead(t, "b's read after the restart", b.File, "config v4")
	st := status(t)
	t.Logf("after the restart: %+v", st)
	if st.Enforcement != "enforced" || st.InForce == 0 || st.Lost != 0 {
		t.Errorf("status after the restart: enforcement %q, in_force %d, lost_revocations %d; want enforced, > 0, 0", st.Enforcement, st.InForce, st.Lost)
	}

	c2 := dial(t)
	if err := c2.RevokeGrant("", "cfg4", grantID(t, c2, "cfg4", "cgroup:/b", b.File)); err != nil {
		t.Fatal(err)
	}
	_, err = preadErr(b.File)
	wantEPERM(t, "b's read after the new agent revoked its grant", err)
	wantRead(t, "the publisher's own", mem, "config v4")
}

// TestSubtreeRevoke: revoking a's grant revokes what a delegated from it,
// in the kernel too.
func TestSubtreeRevoke(t *testing.T) {
	timed(t)
	enforced(t)
	c := dial(t)
	mem := memfd(t, "doc5", "document")
	if err := c.Publish("doc5", mem, &client.PublishOptions{PerConsumer: true}); err != nil {
		t.Fatal(err)
	}
	ref := "cgroup:/pub:doc5"
	if r := run(t, "c", nil, capd, "acquire", ref, "--", "true"); r.code == 0 {
		t.Fatalf("/c acquired without a grant or a delegation: %+v", r)
	}
	if r := run(t, "a", nil, capd, "acquire", ref, "--", capd, "delegate", ref, "--to", "cgroup:/c", "--fd", "3"); r.code != 0 {
		t.Fatalf("a delegating to /c: %+v", r)
	}
	a := acquireIn(t, "a", ref)
	cc := acquireIn(t, "c", ref)
	b := acquireIn(t, "b", ref)
	ga := grantID(t, c, "doc5", "cgroup:/a", a.File)
	if g := grantOf(t, c, "doc5", "cgroup:/c"); g.Parent != ga {
		t.Fatalf("c's grant %+v, want one whose parent is %s", g, ga)
	}
	wantRead(t, "c before revoke", cc.File, "document")

	if err := c.RevokeGrant("", "doc5", ga); err != nil {
		t.Fatal(err)
	}
	_, err := preadErr(a.File)
	wantEPERM(t, "a's read after revoking its grant", err)
	_, err = preadErr(cc.File)
	wantEPERM(t, "c's (delegated) read after revoking a's grant", err)
	wantEPERM(t, "reopen of c's", reopen(cc.File))
	wantRead(t, "b (not in a's subtree)", b.File, "document")
	wantRead(t, "the publisher's own", mem, "document")
}

// TestPublisherExempt: with KeepPublisher, the entry's revoke spares the
// publisher's cgroup: the same open file description fails in /a and
// still works in /pub.
func TestPublisherExempt(t *testing.T) {
	timed(t)
	enforced(t)
	c := dial(t)
	mem := memfd(t, "keep6", "kept")
	if err := c.Publish("keep6", mem, &client.PublishOptions{KeepPublisher: true}); err != nil {
		t.Fatal(err)
	}
	a := acquireIn(t, "a", "cgroup:/pub:keep6")
	if r := roleIn(t, "a", "pread-fd3", a.File); r.code != 0 {
		t.Fatalf("a child in /a reading before the revoke: %+v", r)
	}
	if err := c.Revoke("keep6"); err != nil {
		t.Fatal(err)
	}
	if r := roleIn(t, "a", "pread-fd3", a.File); r.code != 3 {
		t.Errorf("a child in /a reading the description after the revoke: exit %d, %s%s; want EPERM (exit 3)", r.code, r.stdout, r.stderr)
	} else {
		t.Logf("a child in /a: %s", strings.TrimSpace(r.stdout))
	}
	if r := roleIn(t, "b", "pread-fd3", mem); r.code != 3 {
		t.Errorf("a child in /b reading the publisher's file after the revoke: exit %d, %s%s; want EPERM (exit 3)", r.code, r.stdout, r.stderr)
	}
	wantRead(t, "the publisher (in /pub) reading its own file", mem, "kept")
	wantRead(t, "the publisher (in /pub) reading a's copy, the same description", a.File, "kept")
	if r := roleIn(t, "pub", "pread-fd3", a.File); r.code != 0 {
		t.Errorf("a child in /pub reading the description: %+v", r)
	}
}

// TestMappingBeforeRevoke documents the limit: a mapping made before the
// revoke keeps reading the file (the kernel checks mmap, not page
// faults); a new mapping, or making the old one writable, is refused.
func TestMappingBeforeRevoke(t *testing.T) {
	timed(t)
	enforced(t)
	c := dial(t)
	mem := memfd(t, "map7", "mapped v1")
	if err := c.Publish("map7", mem, &client.PublishOptions{PerConsumer: true}); err != nil {
		t.Fatal(err)
	}
	a := acquireIn(t, "a", "cgroup:/pub:map7")
	fd := int(a.Fd())
	m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if err := c.RevokeGrant("", "map7", grantID(t, c, "map7", "cgroup:/a", a.File)); err != nil {
		t.Fatal(err)
	}
	_, err = preadErr(a.File)
	wantEPERM(t, "pread after the revoke", err)
	// The publisher writes on: the old mapping sees it.
	if _, err := unix.Pwrite(int(mem.Fd()), []byte("mapped v2"), 0); err != nil {
		t.Fatal(err)
	}
	if got := string(m[:9]); got != "mapped v2" {
		t.Errorf("the mapping made before the revoke reads %q, want %q", got, "mapped v2")
	} else {
		t.Logf("the mapping made before the revoke still reads the file: %q (the documented limit)", got)
	}
	if m2, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED); err == nil {
		unix.Munmap(m2)
		t.Error("a new mmap after the revoke succeeded")
	} else {
		wantEPERM(t, "a new mmap after the revoke", err)
	}
	wantEPERM(t, "mprotect of the old mapping to writable", unix.Mprotect(m, unix.PROT_READ|unix.PROT_WRITE))
}
