package tests

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/testutil"
)

// holder runs "capd acquire REF -- sleep" in unit's cgroup and returns a
// copy of the fd it holds (taken with pidfd_getfd: the same open file
// description), which the test owns; the holder ends with the test.
func (e *env) holder(unit, ref string, extra ...string) *os.File {
	e.t.Helper()
	return e.holderAs(unit, 0, ref, extra...)
}

// holderAs is holder with another uid (0 keeps root).
func (e *env) holderAs(unit string, uid uint32, ref string, extra ...string) *os.File {
	e.t.Helper()
	args := append([]string{"acquire"}, extra...)
	args = append(args, ref, "--", "sleep", "600")
	cmd := e.cgs[unit].Command(capd, args...)
	cmd.Env = e.agent.Env()
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid}
	}
	var stderr testutil.LogBuffer // safe to read while the command writes it
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer unix.Close(pidfd)
	// Once sleep runs, fd 3 is the acquired one.
	deadline := time.Now().Add(20 * time.Second)
	for {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/comm")
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			e.t.Fatalf("%s in %s did not get to exec: %s", ref, unit, stderr.String())
		}
		if err := unix.Waitid(unix.P_PIDFD, pidfd, nil, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err == nil {
			var si unix.Siginfo
			if unix.Waitid(unix.P_PIDFD, pidfd, &si, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); si.Signo != 0 {
				cmd.Wait()
				e.t.Fatalf("capd acquire %s in %s failed: %s\nagent log:\n%s", ref, unit, stderr.String(), e.agent.Log)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	fd, err := unix.PidfdGetfd(pidfd, 3, 0)
	if err != nil {
		e.t.Fatalf("pidfd_getfd: %v", err)
	}
	return os.NewFile(uintptr(fd), ref+"@"+unit)
}

func sameDescription(t *testing.T, a, b *os.File) bool {
	t.Helper()
	r, err := unix.FcntlInt(a.Fd(), unix.F_DUPFD_QUERY, int(b.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return r == 1
}

func listJSONOf(t *testing.T, e *env, unit string) []client.Entry {
	t.Helper()
	r := e.mustRun(unit, nil, "list", "--json")
	var doc struct {
		Entries []client.Entry `json:"entries"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("list --json: %v\n%s", err, r.stdout)
	}
	return doc.Entries
}

// TestPerConsumerGrants: each consumer of an entry published per consumer
// gets its own open file description; the publisher tells them apart with
// check and revokes one consumer's grant while the other's stays.
func TestPerConsumerGrants(t *testing.T) {
	me := selfIdentity(t)
	e := newEnv(t, `
[[grant]]
consumer = "*.service"
acquire  = ["`+me+`:cfg"]
`, "a.service", "b.service")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mfd, _ := unix.MemfdCreate("cfg", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	mem := os.NewFile(uintptr(mfd), "cfg")
	defer mem.Close()
	mem.WriteString("config v1")
	if err := c.Publish("cfg", mem, &client.PublishOptions{PerConsumer: true}); err != nil {
		t.Fatal(err)
	}
	a := e.holder("a.service", me+":cfg")
	defer a.Close()
	b := e.holder("b.service", me+":cfg")
	defer b.Close()
	if sameDescription(t, a, b) || sameDescription(t, a, mem) {
		t.Fatal("consumers share a description: want one each")
	}
	// Same file: both read what the publisher wrote.
	buf := make([]byte, 32)
	if n, _ := unix.Pread(int(a.Fd()), buf, 0); string(buf[:n]) != "config v1" {
		t.Fatalf("a reads %q", buf[:n])
	}
	ca, err := c.Check("", "cfg", a)
	if err != nil || ca.Grant == nil || ca.Grant.Grantee != "a.service" || ca.Grant.Parent != "" || ca.Grant.Depth != 1 {
		t.Fatalf("check(a) = %+v %+v, %v", ca, grantOf(ca), err)
	}
	cb, err := c.Check("", "cfg", b)
	if err != nil || cb.Grant == nil || cb.Grant.Grantee != "b.service" || cb.Grant.ID == ca.Grant.ID {
		t.Fatalf("check(b) = %+v, %v", grantOf(cb), err)
	}
	if own, err := c.Check("", "cfg", mem); err != nil || own.Grant != nil {
		t.Fatalf("check(publisher's own) = %+v, %v; want the entry itself", grantOf(own), err)
	}
	other, _ := unix.MemfdCreate("other", unix.MFD_CLOEXEC)
	of := os.NewFile(uintptr(other), "other")
	defer of.Close()
	if _, err := c.Check("", "cfg", of); !errors.Is(err, client.ErrNotOurs) {
		t.Fatalf("check(unrelated) = %v, want not-ours", err)
	}
	// capd check: the grant and its grantee, or exit code 9.
	if r := e.run("", []*os.File{b}, "check", "--fd", "3", "cfg"); r.code != 0 || r.stdout != me+":cfg grant "+cb.Grant.ID+" for b.service\n" {
		t.Fatalf("capd check: %+v", r)
	}
	if r := e.run("", []*os.File{of}, "check", "--fd", "3", "cfg"); r.code != 9 || !strings.Contains(r.stderr, "not-ours") {
		t.Fatalf("capd check of an unrelated fd: %+v", r)
	}
	// acquire --verbose says which grant the consumer got.
	if r := e.run("b.service", nil, "acquire", "-v", me+":cfg", "--", "true"); r.code != 0 || !strings.Contains(r.stderr, "fd 3: "+me+":cfg: grant "+cb.Grant.ID+" (per-consumer); revocation advisory") {
		t.Fatalf("acquire --verbose: %+v", r)
	}
	if r := e.run("", nil, "acquire", "-v", me+":cfg", "--", "true"); r.code != 0 || !strings.Contains(r.stderr, "the entry's own description") {
		t.Fatalf("the owner's acquire --verbose: %+v", r)
	}
	// A second acquire by a.service gets its grant again: the same
	// description, no second grant.
	a2 := e.holder("a.service", me+":cfg")
	defer a2.Close()
	if !sameDescription(t, a, a2) {
		t.Fatal("a.service's second acquire got a new description")
	}
	ents := listJSONOf(t, e, "")
	if len(ents) != 1 || len(ents[0].Grants) != 2 || ents[0].Enforcement == "" || !strings.Contains(strings.Join(ents[0].Restrict, ","), "per-consumer") {
		t.Fatalf("list: %+v", ents)
	}
	// audit shows who holds each grant: a.service's sleep holds its own
	// (NAME#gN), b.service's its own, neither the other's (this process
	// holds copies of both).
	rep := e.audit()
	ga := holders(rep.Entries, me, "cfg#"+ca.Grant.ID)
	gb := holders(rep.Entries, me, "cfg#"+cb.Grant.ID)
	delete(ga, os.Getpid())
	delete(gb, os.Getpid())
	if len(ga) == 0 || len(gb) == 0 {
		t.Fatalf("audit: holders of a's grant %v, of b's %v; entries %+v", ga, gb, rep.Entries)
	}
	for pid, h := range ga {
		if _, both := gb[pid]; both || h.Identity == nil || *h.Identity != "a.service" {
			t.Fatalf("audit: pid %d (%v) holds a's grant, and b's too: %v", pid, h.Identity, both)
		}
	}
	// Another uid in a.service is another consumer, with a grant of its
	// own; a consumer sees its own grant only.
	n := e.holderAs("a.service", 65534, me+":cfg")
	defer n.Close()
	if sameDescription(t, n, a) {
		t.Fatal("uid 65534 in a.service got uid 0's grant")
	}
	r := e.runAs("a.service", 65534, nil, "list", "--json")
	if r.code != 0 || strings.Count(r.stdout, `"id": "g`) != 1 || !strings.Contains(r.stdout, `"uid": 65534`) {
		t.Fatalf("a.service uid 65534's list: %+v", r)
	}

	// Revoking a.service's grant leaves b.service's.
	if err := c.RevokeGrant("", "cfg", ca.Grant.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Check("", "cfg", a); !errors.Is(err, client.ErrNotOurs) {
		t.Fatalf("check(a) after revoking its grant = %v, want not-ours", err)
	}
	if cb2, err := c.Check("", "cfg", b); err != nil || cb2.Grant == nil || cb2.Grant.ID != cb.Grant.ID {
		t.Fatalf("check(b) after revoking a's grant = %+v, %v", grantOf(cb2), err)
	}
	if err := c.RevokeGrant("", "cfg", ca.Grant.ID); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("revoking it again: %v, want not-found", err)
	}
	// A consumer (not root) may not revoke another's grant.
	if r := e.runAs("a.service", 65534, nil, "revoke", "--owner", me, "--grant", cb.Grant.ID, "cfg"); r.code == 0 || !strings.Contains(r.stderr, "permission-denied") {
		t.Fatalf("a.service revoked b.service's grant: %+v", r)
	}
	// Publishing it anew lets a.service in again, with a new grant.
	if err := c.Publish("cfg", mem, &client.PublishOptions{PerConsumer: true, Replace: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Check("", "cfg", b); !errors.Is(err, client.ErrNotOurs) {
		t.Fatalf("b's grant of the replaced entry: %v", err)
	}
	a3 := e.holder("a.service", me+":cfg")
	defer a3.Close()
	b = e.holder("b.service", me+":cfg")
	defer b.Close()
	// Revoking the entry takes its grants.
	if err := c.Revoke("cfg"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Check("", "cfg", b); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("check after revoking the entry: %v", err)
	}
	if st := e.mustRun("", nil, "status", "--json").stdout; strings.Contains(st, `"entries": 1`) {
		t.Fatalf("grants outlived their entry: %s", st)
	}
}

func grantOf(c *client.Checked) any {
	if c == nil || c.Grant == nil {
		return c
	}
	return *c.Grant
}

// TestPerConsumerGrantsFromPolicy: the admin's grant asks for per-consumer
// read-only grants of an entry published plainly.
func TestPerConsumerGrantsFromPolicy(t *testing.T) {
	me := selfIdentity(t)
	e := newEnv(t, `
[[grant]]
consumer = "a.service"
acquire  = ["`+me+`:*"]
restrict = ["read-only"]
`, "a.service")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// An unsealed memfd cannot give a read-only grant that stays one.
	mfd, _ := unix.MemfdCreate("m", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	mem := os.NewFile(uintptr(mfd), "m")
	defer mem.Close()
	mem.WriteString("hello")
	if err := c.Publish("m", mem, nil); err != nil {
		t.Fatal(err)
	}
	r := e.run("a.service", nil, "acquire", me+":m", "--", "true")
	if r.code == 0 || !strings.Contains(r.stderr, "F_SEAL_FUTURE_WRITE") {
		t.Fatalf("read-only grant of an unsealed memfd: %+v", r)
	}
	// Sealed with F_SEAL_FUTURE_WRITE, the publisher keeps writing through
	// its mapping; the consumer's view is read-only, and reopening it
	// through /proc does not make it writable.
	if _, err := unix.FcntlInt(mem.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_FUTURE_WRITE|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		t.Fatal(err)
	}
	v := e.holder("a.service", me+":m")
	defer v.Close()
	fl, _ := unix.FcntlInt(v.Fd(), unix.F_GETFL, 0)
	if fl&unix.O_ACCMODE != unix.O_RDONLY {
		t.Fatalf("consumer's flags %#o, want O_RDONLY", fl)
	}
	if _, err := unix.Pwrite(int(v.Fd()), []byte("x"), 0); err == nil {
		t.Fatal("wrote through a read-only grant")
	}
	if _, err := unix.Mmap(int(v.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.Fatal("mapped a read-only grant writable")
	}
	rw, err := unix.Open("/proc/self/fd/"+strconv.Itoa(int(v.Fd())), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		defer unix.Close(rw)
		if _, err := unix.Pwrite(rw, []byte("x"), 0); err == nil {
			t.Fatal("reopened a read-only grant through /proc and wrote")
		}
	}
	// A regular file: reopened read-only.
	tf, err := os.OpenFile(t.TempDir(), os.O_RDWR|unix.O_TMPFILE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	tf.WriteString("tmp")
	if err := c.Publish("t", tf, nil); err != nil {
		t.Fatal(err)
	}
	tv := e.holder("a.service", me+":t")
	defer tv.Close()
	if _, err := unix.Pwrite(int(tv.Fd()), []byte("x"), 0); !errors.Is(err, unix.EBADF) {
		t.Fatalf("write to a read-only tmpfile grant: %v, want EBADF", err)
	}
	if ch, err := c.Check("", "t", tv); err != nil || ch.Grant == nil || !strings.Contains(strings.Join(ch.Grant.Restrict, ","), "read-only") {
		t.Fatalf("check = %+v, %v", grantOf(ch), err)
	}
	// A socket has one description for all: policy that asks for grants
	// of it refuses the consumer, never hands out the shared one.
	sp, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	s0 := os.NewFile(uintptr(sp[0]), "s0")
	defer s0.Close()
	unix.Close(sp[1])
	if err := c.Publish("s", s0, nil); err != nil {
		t.Fatal(err)
	}
	if r := e.run("a.service", nil, "acquire", me+":s", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "cannot be reopened") {
		t.Fatalf("per-consumer grant of a socket: %+v", r)
	}
	// And a publisher asking for it is told at publish.
	if err := c.Publish("s2", s0, &client.PublishOptions{PerConsumer: true}); !errors.Is(err, client.ErrInvalidRequest) {
		t.Fatalf("publishing a socket per consumer: %v, want invalid-request", err)
	}
}

// TestDetachedDirGrant: a directory fd reaches its parent with "..": the
// escape a plain directory entry allows. A per-consumer grant of it is a
// detached mount of the tree, whose root ".." does not leave, read-only
// and noexec as asked; and such a grant reaches a consumer in a container
// without allow_kinds.
func TestDetachedDirGrant(t *testing.T) {
	me := selfIdentity(t)
	e := newEnv(t, `
[[grant]]
consumer = "a.service"
acquire  = ["`+me+`:*"]
`, "a.service")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	top := t.TempDir()
	inner := filepath.Join(top, "shared")
	os.Mkdir(inner, 0o755)
	os.WriteFile(filepath.Join(inner, "data"), []byte("shared data"), 0o644)
	os.Mkdir(filepath.Join(inner, "sub"), 0o755)
	os.WriteFile(filepath.Join(top, "secret"), []byte("the secret"), 0o600)
	os.WriteFile(filepath.Join(inner, "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
	d, err := os.Open(inner)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := c.Publish("plain", d, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish("tree", d, &client.PublishOptions{Restrict: []string{"read-only", "noexec"}}); err != nil {
		t.Fatal(err)
	}
	escape := func(f *os.File) (string, error) {
		fd, err := unix.Openat(int(f.Fd()), "../secret", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		defer unix.Close(fd)
		b := make([]byte, 64)
		n, _ := unix.Read(fd, b)
		return string(b[:n]), nil
	}
	// The attack: the plain entry's ".." is the directory above.
	plain := e.holder("a.service", me+":plain")
	defer plain.Close()
	if got, err := escape(plain); err != nil || got != "the secret" {
		t.Fatalf("the escape through a plain directory fd: %q, %v (the test's premise)", got, err)
	}
	// The same attack on the grant: ".." is the tree's root itself.
	tree := e.holder("a.service", me+":tree")
	defer tree.Close()
	if got, err := escape(tree); err == nil {
		t.Fatalf("escaped the detached mount: read %q", got)
	}
	for _, p := range []string{"..", "../..", "../../..", "sub/../..", "sub/../../.."} {
		fd, err := unix.Openat(int(tree.Fd()), p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("openat(tree, %q): %v", p, err)
		}
		var st, root unix.Stat_t
		unix.Fstat(fd, &st)
		unix.Fstat(int(tree.Fd()), &root)
		unix.Close(fd)
		if st.Ino != root.Ino {
			t.Fatalf("openat(tree, %q) left the tree (inode %d, root %d)", p, st.Ino, root.Ino)
		}
	}
	if b, err := readAt(tree, "data"); err != nil || b != "shared data" {
		t.Fatalf("reading the tree: %q, %v", b, err)
	}
	if fd, err := unix.Openat(int(tree.Fd()), "new", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644); !errors.Is(err, unix.EROFS) {
		if err == nil {
			unix.Close(fd)
		}
		t.Fatalf("creating a file in a read-only tree: %v, want EROFS", err)
	}
	// noexec: the script cannot be executed from the tree.
	cmd := exec.Command("/bin/sh", "-c", `exec /proc/self/fd/3/run.sh`)
	cmd.ExtraFiles = []*os.File{tree}
	if out, err := cmd.CombinedOutput(); err == nil || strings.Contains(string(out), "ran") {
		t.Fatalf("executed a file in a noexec tree: %s", out)
	}
	if ch, err := c.Check("", "tree", tree); err != nil || ch.Grant == nil {
		t.Fatalf("check(tree) = %+v, %v", grantOf(ch), err)
	}
}

func readAt(dir *os.File, name string) (string, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	b := make([]byte, 64)
	n, err := unix.Read(fd, b)
	return string(b[:max(n, 0)]), err
}

// nobody is the uid consumers run as where authority matters: root with
// CAP_SYS_ADMIN is a host administrator, who may do everything.
const nobody = 65534

// TestDelegation: a consumer delegates its grant where policy allows,
// never with fewer restrictions, no deeper than max_grant_depth; revoking
// a grant revokes what was delegated from it, and a delegator may revoke
// what it delegated.
func TestDelegation(t *testing.T) {
	me := selfIdentity(t)
	e := newEnv(t, `
[agent]
max_grant_depth = 2

[[grant]]
consumer    = "a.service"
acquire     = ["`+me+`:doc"]
restrict    = ["read-only"]
delegate_to = ["b.service", "d.service"]

[[grant]]
consumer    = "b.service"
acquire     = ["`+me+`:other"]
delegate_to = ["c.service"]
`, "a.service", "b.service", "c.service", "d.service")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tf, err := os.OpenFile(t.TempDir(), os.O_RDWR|unix.O_TMPFILE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	tf.WriteString("document")
	if err := c.Publish("doc", tf, nil); err != nil {
		t.Fatal(err)
	}
	ref := me + ":doc"
	// b.service has no grant of its own: refused.
	if r := e.runAs("b.service", nobody, nil, "acquire", ref, "--", "true"); r.code == 0 {
		t.Fatalf("b.service acquired without a grant: %+v", r)
	}
	delegate := func(unit string, args ...string) result {
		a := append([]string{"acquire", ref, "--", capd, "delegate", ref}, args...)
		return e.runAs(unit, nobody, nil, a...)
	}
	// Not to an identity delegate_to does not name.
	if r := delegate("a.service", "--to", "c.service", "--fd", "3"); r.code == 0 || !strings.Contains(r.stderr, "delegate_to") {
		t.Fatalf("delegated to c.service: %+v", r)
	}
	// Not from an fd that is not a grant of the entry.
	if r := e.runAs("a.service", nobody, nil, "delegate", ref, "--to", "b.service", "--fd", "0"); r.code == 0 {
		t.Fatalf("delegated stdin: %+v", r)
	}
	r := delegate("a.service", "--to", "b.service", "--fd", "3", "--restrict", "noexec")
	if r.code == 0 || !strings.Contains(r.stderr, "nosuid, nodev and noexec restrict directories") {
		t.Fatalf("noexec on a file: %+v", r)
	}
	if r := delegate("a.service", "--to", "b.service", "--fd", "3"); r.code != 0 {
		t.Fatalf("delegate to b.service: %+v", r)
	}
	av := e.holderAs("a.service", nobody, ref)
	defer av.Close()
	bv := e.holderAs("b.service", nobody, ref)
	defer bv.Close()
	ca, err := c.Check("", "doc", av)
	if err != nil || ca.Grant == nil {
		t.Fatalf("check(a) = %v", err)
	}
	cb, err := c.Check("", "doc", bv)
	if err != nil || cb.Grant == nil || cb.Grant.Grantee != "b.service" || cb.Grant.Parent != ca.Grant.ID || cb.Grant.Depth != 2 {
		t.Fatalf("check(b) = %+v, %v", grantOf(cb), err)
	}
	// The delegated grant holds no more than its parent: read-only.
	if !strings.Contains(strings.Join(cb.Grant.Restrict, ","), "read-only") {
		t.Fatalf("delegated grant dropped read-only: %v", cb.Grant.Restrict)
	}
	if _, err := unix.Pwrite(int(bv.Fd()), []byte("x"), 0); err == nil {
		t.Fatal("the delegate wrote through a read-only grant")
	}
	// Depth: b.service's grant is 2 deep, the limit.
	if r := e.runAs("b.service", nobody, nil, "acquire", ref, "--", capd, "delegate", ref, "--to", "c.service", "--fd", "3"); r.code == 0 {
		t.Fatalf("b.service delegated past max_grant_depth or without delegate_to: %+v", r)
	}
	// A second delegation, to d.service, which its delegator revokes.
	if r := delegate("a.service", "--to", "d.service", "--fd", "3"); r.code != 0 {
		t.Fatalf("delegate to d.service: %+v", r)
	}
	dv := e.holderAs("d.service", nobody, ref)
	defer dv.Close()
	cd, err := c.Check("", "doc", dv)
	if err != nil || cd.Grant == nil || cd.Grant.Parent != ca.Grant.ID {
		t.Fatalf("check(d) = %+v, %v", grantOf(cd), err)
	}
	if r := e.runAs("b.service", nobody, nil, "revoke", "--owner", me, "--grant", cd.Grant.ID, "doc"); r.code == 0 {
		t.Fatalf("b.service revoked its sibling's grant: %+v", r)
	}
	if r := e.runAs("a.service", nobody, nil, "revoke", "--owner", me, "--grant", cd.Grant.ID, "doc"); r.code != 0 {
		t.Fatalf("a.service revoking what it delegated: %+v", r)
	}
	if _, err := c.Check("", "doc", dv); !errors.Is(err, client.ErrNotOurs) {
		t.Fatalf("check(d) after its delegator revoked it: %v", err)
	}
	// d.service cannot acquire again: nothing is delegated to it now.
	if r := e.runAs("d.service", nobody, nil, "acquire", ref, "--", "true"); r.code == 0 {
		t.Fatalf("d.service acquired after its grant was revoked: %+v", r)
	}
	// The tree in list.
	ents := listJSONOf(t, e, "")
	if len(ents) != 1 || len(ents[0].Grants) != 2 || ents[0].Grants[1].Parent != ents[0].Grants[0].ID {
		t.Fatalf("list: %+v", ents)
	}
	// Subtree revoke: a's grant takes b's.
	if err := c.RevokeGrant("", "doc", ca.Grant.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Check("", "doc", bv); !errors.Is(err, client.ErrNotOurs) {
		t.Fatalf("check(b) after revoking its parent: %v", err)
	}
	if r := e.runAs("b.service", nobody, nil, "acquire", ref, "--", "true"); r.code == 0 {
		t.Fatalf("b.service acquired after its parent grant was revoked: %+v", r)
	}
}

// TestGrantsSurviveRestart: grants are kept like entries: after a
// hand-off to the next agent process (SIGUSR2), check still tells the consumers apart, and a
// grant's revoke still reaches it.
func TestGrantsSurviveRestart(t *testing.T) {
	me := selfIdentity(t)
	e := newEnv(t, `
[[grant]]
consumer = "*.service"
acquire  = ["`+me+`:cfg"]
`, "a.service", "b.service")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	mfd, _ := unix.MemfdCreate("cfg", unix.MFD_CLOEXEC)
	mem := os.NewFile(uintptr(mfd), "cfg")
	defer mem.Close()
	if err := c.Publish("cfg", mem, &client.PublishOptions{PerConsumer: true, Pin: true}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	a := e.holder("a.service", me+":cfg")
	defer a.Close()
	b := e.holder("b.service", me+":cfg")
	defer b.Close()
	// The entry and its two grants, handed to the next agent process.
	before := strings.Count(e.agent.Log.String(), "restored entries from the previous agent process")
	if err := e.agent.Cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	e.agent.WaitLog(t, "restored entries from the previous agent process\" entries=3", before)
	c, err = client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ca, err := c.Check("", "cfg", a)
	if err != nil || ca.Grant == nil || ca.Grant.Grantee != "a.service" {
		t.Fatalf("check(a) after restart = %+v, %v\n%s", grantOf(ca), err, e.agent.Log.String())
	}
	cb, err := c.Check("", "cfg", b)
	if err != nil || cb.Grant == nil || cb.Grant.Grantee != "b.service" {
		t.Fatalf("check(b) after restart = %+v, %v", grantOf(cb), err)
	}
	if err := c.RevokeGrant("", "cfg", ca.Grant.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Check("", "cfg", a); !errors.Is(err, client.ErrNotOurs) {
		t.Fatalf("check(a) after revoke: %v", err)
	}
}

// TestRevocationAdvisoryHere: this machine's kernel refuses BPF LSM
// programs, and the agent says so: status and list call revocation
// advisory, with the kernel's refusal, rather than claim more.
func TestRevocationAdvisoryHere(t *testing.T) {
	e := newEnv(t, "")
	var st struct {
		Enforcement string `json:"enforcement"`
		EnforcedBy  string `json:"enforced_by"`
		InForce     int    `json:"in_force"`
	}
	r := e.mustRun("", nil, "status", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.Enforcement != "advisory" || !strings.Contains(st.EnforcedBy, "operation not permitted") || st.InForce != 0 {
		t.Fatalf("status on a kernel that refuses BPF LSM: %+v", st)
	}
	if !strings.Contains(e.agent.Log.String(), "revocation is advisory") {
		t.Fatalf("the agent's log does not say revocation is advisory:\n%s", e.agent.Log)
	}
	if out := e.mustRun("", nil, "status").stdout; !strings.Contains(out, "revocation: advisory") {
		t.Fatalf("capd status: %s", out)
	}
	tok, _ := client.NewToken("t")
	defer tok.Close()
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := tok.Publish(c, nil); err != nil {
		t.Fatal(err)
	}
	if ents := listJSONOf(t, e, ""); len(ents) != 1 || ents[0].Enforcement != "advisory" {
		t.Fatalf("list: %+v", ents)
	}
}
