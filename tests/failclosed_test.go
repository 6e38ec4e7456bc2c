package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

// Fail-closed attack tests. Each test is an attack; it passes when the
// agent refuses it. The contract they check:
//
//   - A host administrator is uid 0 holding CAP_SYS_ADMIN (audit: also
//     CAP_SYS_PTRACE) in the agent's own user and pid namespace, outside
//     every registered container's cgroup. Only it may run status, audit,
//     revoke --owner of another owner's entry, register containers and see
//     every entry; refusals exit 4 naming "host administrator" (audit
//     without CAP_SYS_PTRACE: "CAP_SYS_PTRACE").
//   - A container's identity never lapses while a process remains in its
//     cgroup, across agent restarts.
//   - An owner is a uid as well as a cgroup.
//   - No uid exhausts what others need (per-uid limits, exit 7 naming the
//     uid; an admin reserve; connections counted per user namespace owner).
//   - Logging per peer is bounded; directory and O_PATH fds need allow_kinds;
//     identities are systemd-shaped; output carries no control bytes.

// ---- A. Host administrator ----

// Attack: root with every capability dropped (what a compromised service
// running as uid 0 with CapabilityBoundingSet= empty has) runs the host
// administrator's commands.
func TestFailClosedEmptyCapRootIsNotAdmin(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy, "rpm-ostreed.service", "zincati.service")
	if eff, prm := capSets(t, noCaps); eff != 0 || prm != 0 {
		t.Fatalf("setpriv left capabilities: CapEff %#x CapPrm %#x", eff, prm)
	}
	e.publishFile("rpm-ostreed.service", "zincati-fd", "granted")
	e.publishFile("rpm-ostreed.service", "secret", "ungranted")
	f := tempFile(t, "mine")
	defer f.Close()
	if r := e.runVia("zincati.service", 0, noCaps, []*os.File{f}, "publish", "mine", "--fd", "3"); r.code != 0 {
		t.Fatalf("capless root publishes its own entry: %+v", r)
	}

	// It sees its own entry and what it is granted, not another
	// service's ungranted one.
	r := e.runVia("zincati.service", 0, noCaps, nil, "list", "--json")
	var list cliList
	if r.code != 0 || parseJSONErr(r.stdout, &list) != nil {
		t.Fatalf("list: %+v", r)
	}
	var seen []string
	for _, en := range list.Entries {
		seen = append(seen, en.Owner+":"+en.Name)
	}
	if got := strings.Join(seen, " "); got != "rpm-ostreed.service:zincati-fd zincati.service:mine" {
		t.Errorf("capless root lists %q, want only its own and its granted entry", got)
	}

	for _, args := range [][]string{{"status"}, {"status", "--json"}, {"audit"}, {"revoke", "--owner", "rpm-ostreed.service", "secret"}} {
		refused(t, "capless root: capd "+strings.Join(args, " "), e.runVia("zincati.service", 0, noCaps, nil, args...), 4, "host administrator")
	}
	if r := e.run("rpm-ostreed.service", nil, "acquire", "rpm-ostreed.service:secret", "--", "cat", "/proc/self/fd/3"); r.code != 0 || r.stdout != "ungranted" {
		t.Errorf("after the capless revoke --owner, the owner's entry is gone: %+v", r)
	}
}

// Attack: capless root registers a process of its choosing as container
// "web", so that processes it puts in that cgroup acquire what policy
// grants container:web. The hook is the real `capd hook` run under setpriv;
// the "container" a plain sleep alone in a fresh, non-unit cgroup (what
// registration demands).
func TestFailClosedEmptyCapRootCannotRegister(t *testing.T) {
	e := newFCEnv(t, nil, "[[grant]]\nconsumer = \"container:web\"\nacquire = [\"rpm-ostreed.service:zincati-fd\"]\n", "rpm-ostreed.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "secret")
	cg := testutil.NewCgroup(t, "ctr-fake")
	e.cgs["ctr-fake"] = cg
	init := startIn(t, cg, "sleep", "300")
	bundle := fakeBundle(t)
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "web", "io.capd.required": "true"}

	// Required: the refused registration fails the hook.
	refused(t, "capless capd hook (required)", e.hook(noCaps, ociState("fake", init.Process.Pid, bundle, ann)), 4, "host administrator")
	// Not required (the hook then only warns about what it cannot do,
	// here the /run/capd mount): what counts is whether the agent took
	// the registration.
	delete(ann, "io.capd.required")
	r := e.hook(noCaps, ociState("fake", init.Process.Pid, bundle, ann))
	t.Logf("capless capd hook (not required): exit %d, stderr %q", r.code, r.stderr)
	if n := e.containers(); n != 0 {
		t.Errorf("after capless capd hook the agent holds %d containers, want 0", n)
	}
	if who := strings.TrimSpace(e.mustRun("ctr-fake", nil, "whoami").stdout); who == "container:web" {
		t.Errorf("a process in the capless root's cgroup is %s", who)
	}
	r = e.run("ctr-fake", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "cat", "/proc/self/fd/3")
	refused(t, "acquire granted to container:web from the forged container", r, 4)
}

// Attack: root without CAP_SYS_PTRACE (which cannot read other processes'
// fds itself) asks the agent to audit every process's fds for it.
func TestFailClosedAuditNeedsPtrace(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy, "rpm-ostreed.service")
	eff, _ := capSets(t, noPtrace)
	if eff&(1<<capSysPtrace) != 0 || eff&(1<<capSysAdmin) == 0 {
		t.Fatalf("setpriv %v: CapEff %#x, want CAP_SYS_ADMIN without CAP_SYS_PTRACE", noPtrace, eff)
	}
	e.publishFile("rpm-ostreed.service", "zincati-fd", "x")
	refused(t, "audit without CAP_SYS_PTRACE", e.runVia("", 0, noPtrace, nil, "audit"), 4, "CAP_SYS_PTRACE")
	if r := e.runVia("", 0, noPtrace, nil, "status"); r.code != 0 {
		t.Errorf("status with CAP_SYS_ADMIN but without CAP_SYS_PTRACE: %+v", r)
	}
}

// Attack: root of a user namespace of its own (unshare -U -r maps uid 0 to
// 0: the agent sees uid 0, but its capabilities are only the namespace's).
func TestFailClosedUserNamespaceRootIsNotAdmin(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy)
	refused(t, "root in a new user namespace: capd status", e.runVia("", 0, []string{"unshare", "-U", "-r", "--"}, nil, "status"), 4, "host administrator")
}

// Regression: root inside a runc container (its own pid namespace) is not a
// host administrator.
func TestFailClosedContainerRootIsNotAdmin(t *testing.T) {
	e := newFCCtrEnv(t, containerPolicy)
	out := e.mustRunc("web-root", e.bundle([]string{"sh", "-c", `out=$(` + capdIn + ` status 2>&1); echo "status: $? $out"`},
		map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}, true))
	if !strings.HasPrefix(out, "status: 4 ") {
		t.Errorf("root in a container: capd status did not exit 4:\n%s", out)
	}
	if !strings.Contains(out, "host administrator") {
		t.Errorf("root in a container: the refusal does not say \"host administrator\": %s", out)
	}
}

// ---- B. A container's identity never lapses ----

// Attack: a container without a pid namespace, holding CAP_SYS_ADMIN and
// CAP_SYS_PTRACE, lets its init exit while a background process lives on in
// its cgroup. The agent unregisters the container when the init exits; the
// survivor, uid 0 with the admin's capabilities in the host's user and pid
// namespaces, becomes a host administrator.
func TestFailClosedSurvivorKeepsContainerIdentity(t *testing.T) {
	e := newFCCtrEnv(t, containerPolicy)
	script := `(sleep 2; /run/capd/capd whoami > /tmp/out 2>&1; /run/capd/capd status >> /tmp/out 2>&1; echo status=$? >> /tmp/out;
/run/capd/capd acquire rpm-ostreed.service:zincati-fd -- cat /proc/self/fd/3 >> /tmp/out 2>&1; echo >> /tmp/out; echo done >> /tmp/out) & exit 0`
	b := e.bundle([]string{"sh", "-c", script}, map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "web-surv"}, false)
	editSpec(t, b, func(spec map[string]any) {
		lx := spec["linux"].(map[string]any)
		var ns []any
		for _, n := range lx["namespaces"].([]any) {
			if n.(map[string]any)["type"] != "pid" {
				ns = append(ns, n)
			}
		}
		lx["namespaces"] = ns
		caps := spec["process"].(map[string]any)["capabilities"].(map[string]any)
		for _, set := range []string{"bounding", "effective", "inheritable", "permitted", "ambient"} {
			l, _ := caps[set].([]any)
			caps[set] = append(l, "CAP_SYS_ADMIN", "CAP_SYS_PTRACE")
		}
	})
	outFile := filepath.Join(specRootfs(t, b), "tmp", "out")
	// Detached: runc returns while the survivor runs, and nothing deletes
	// the container (killing the survivor) until the test ends.
	t.Cleanup(func() { exec.Command("runc", "--root", e.state, "delete", "-f", "surv").Run() })
	logf, err := os.Create(filepath.Join(t.TempDir(), "runc.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("runc", "--root", e.state, "run", "--detach", "--bundle", b, "surv")
	cmd.Stdout, cmd.Stderr = logf, logf // files, not pipes: the survivor inherits them
	if err := cmd.Run(); err != nil {
		l, _ := os.ReadFile(logf.Name())
		t.Fatalf("runc run --detach: %v\n%s\nagent log:\n%s", err, l, e.agent.Log)
	}
	var out string
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(out, "done"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the survivor did not finish in 60s; its output %q\nagent log:\n%s", out, e.agent.Log)
		}
		b, _ := os.ReadFile(outFile)
		out = string(b)
	}
	lines := strings.Split(out, "\n")
	if lines[0] != "container:web-surv" {
		t.Errorf("the survivor is %q, want container:web-surv", lines[0])
	}
	if !strings.Contains(out, "status=4") {
		t.Errorf("the survivor ran capd status (want exit 4):\n%s", out)
	}
	if !strings.Contains(out, "\nsecret\n") {
		t.Errorf("the survivor's grant does not work:\n%s", out)
	}
}

// Attack: a second container with a running container's id (another
// runtime state root) runs to completion; its poststop unregisters "its"
// id, which is the first container's registration.
func TestFailClosedUnregisterByIDAlone(t *testing.T) {
	e := newFCCtrEnv(t, containerPolicy)
	rootA, rootB := t.TempDir(), t.TempDir()
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "web-twin"}
	cgroupPath := func(which string) func(map[string]any) {
		return func(spec map[string]any) {
			spec["linux"].(map[string]any)["cgroupsPath"] = fmt.Sprintf("/capdfc_%d_%s", os.Getpid(), which)
		}
	}
	a := e.bundle([]string{"sleep", "60"}, ann, true)
	editSpec(t, a, cgroupPath("a"))
	first := exec.Command("runc", "--root", rootA, "run", "--bundle", a, "twin")
	t.Cleanup(func() { exec.Command("runc", "--root", rootA, "delete", "-f", "twin").Run() })
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { exec.Command("runc", "--root", rootA, "kill", "twin", "KILL").Run(); first.Wait() }()
	e.waitContainers(1)

	b := e.bundle([]string{"true"}, ann, true)
	editSpec(t, b, cgroupPath("b"))
	t.Cleanup(func() { exec.Command("runc", "--root", rootB, "delete", "-f", "twin").Run() })
	r := e.exec(exec.Command("runc", "--root", rootB, "run", "--bundle", b, "twin"))
	t.Logf("second container with the same id: exit %d, stderr %q", r.code, r.stderr)

	if n := e.containers(); n != 1 {
		t.Errorf("after the second container's poststop the agent holds %d containers, want 1 (the first runs on)", n)
	}
	r = e.exec(exec.Command("runc", "--root", rootA, "exec", "twin", "/run/capd/capd", "whoami"))
	if got := strings.TrimSpace(r.stdout); r.code != 0 || got != "container:web-twin" {
		t.Errorf("in the first container: whoami = %q (exit %d, %s), want container:web-twin", got, r.code, r.stderr)
	}
}

// A later container with the same name gets the pinned entries of the
// first one back (restart recovery keeps working under the fixes).
func TestFailClosedPinnedEntriesFollowTheName(t *testing.T) {
	e := newFCCtrEnv(t, containerPolicy)
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "pin-back"}
	e.mustRunc("pin-back-1", e.bundle([]string{"sh", "-c", capdIn + " publish --pin ctr-data --fd 3 3</data.txt"}, ann, true))
	e.waitContainers(0)
	out := e.mustRunc("pin-back-2", e.bundle([]string{"sh", "-c", capdIn + " acquire container:pin-back:ctr-data -- cat /proc/self/fd/3; echo \" acquire: $?\""}, ann, true))
	if out != "from-the-image acquire: 0\n" {
		t.Fatalf("the second container under the same name: %q\nagent log:\n%s", out, e.agent.Log)
	}
}

// Attack (denial of service): a registered container's init exits and is
// never reaped. Its pidfd stays readable while the process still answers
// signal 0, so a level-triggered epoll loop spins on it.
func TestFailClosedZombieInitDoesNotSpin(t *testing.T) {
	e := newFCEnv(t, nil, containerPolicy, "rpm-ostreed.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "secret")
	cg := testutil.NewCgroup(t, "ctr-zombie")
	// The init gets a mount namespace of its own, so that the hook's
	// /run/capd mount does not land in the test's.
	init := cg.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", "read x")
	stdin, err := init.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := init.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { init.Process.Kill(); init.Wait() }) // reaped only now
	r := e.hook(nil, ociState("zombie", init.Process.Pid, fakeBundle(t),
		map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "web-zombie"}))
	if n := e.containers(); n != 1 {
		t.Fatalf("registering the init: %d containers (hook exit %d: %s)\nagent log:\n%s", n, r.code, r.stderr, e.agent.Log)
	}
	stdin.Close() // the init exits; nobody reaps it
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", init.Process.Pid))
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the init did not become a zombie: %s", b)
		}
	}
	time.Sleep(100 * time.Millisecond)
	pid := e.agent.Cmd.Process.Pid
	before := cpuTicks(t, pid)
	time.Sleep(2 * time.Second)
	used := cpuTicks(t, pid) - before
	// USER_HZ is 100 on Linux: 2 s of one CPU is 200 ticks.
	if used >= 20 {
		t.Errorf("with an unreaped container init the agent used %d%% of a CPU over 2 s", used/2)
	}
	for deadline := time.Now().Add(5 * time.Second); e.containers() != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("the container whose init exited (unreaped) is still registered after 5s")
			break
		}
	}
}

// ---- C. Owners are a uid as well as a cgroup ----

// Attack: uid 65534 in root's cgroup acquires root's entry "as the owner":
// a 0600 root file, restricted by --allow to nobody else.
func TestFailClosedOwnerIsAlsoTheUID(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy, "shared.service")
	p := filepath.Join(t.TempDir(), "root-only")
	if err := os.WriteFile(p, []byte("root's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e.mustRun("shared.service", []*os.File{f}, "publish", "rootfile", "--fd", "3", "--allow", "nothing-else.service")
	// cat <&3 reads the inherited fd itself (reopening /proc/self/fd/3
	// would check the file's mode again).
	r := e.runAs("shared.service", 65534, nil, "acquire", "shared.service:rootfile", "--", "sh", "-c", "cat <&3")
	refused(t, "uid 65534 acquiring root's entry in the same cgroup", r, 4)
	if strings.Contains(r.stdout, "root's secret") {
		t.Errorf("uid 65534 read root's 0600 file through the agent: %q", r.stdout)
	}
}

// Attack: capless root in the same cgroup replaces uid 1000's entry with
// its own fd (--replace), and uid 1000 can no longer revoke it.
func TestFailClosedReplaceFollowsTheRevokeRule(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy, "shared.service")
	mine, theirs := tempFile(t, "uid 1000's"), tempFile(t, "forged")
	defer mine.Close()
	defer theirs.Close()
	if r := e.runAs("shared.service", 1000, []*os.File{mine}, "publish", "cap", "--fd", "3"); r.code != 0 {
		t.Fatalf("publish as uid 1000: %+v", r)
	}
	refused(t, "capless root replacing uid 1000's entry", e.runVia("shared.service", 0, noCaps, []*os.File{theirs}, "publish", "cap", "--fd", "3", "--replace"), 4)
	if r := e.runAs("shared.service", 1000, nil, "revoke", "cap"); r.code != 0 {
		t.Errorf("uid 1000 revoking its own entry afterwards: %+v", r)
	}
}

// ---- D. Limits one uid cannot exhaust ----

// publishAs publishes a tiny file as uid in unit's cgroup.
func (e *env) publishAs(unit string, uid uint32, name string, flags ...string) result {
	e.t.Helper()
	f := tempFile(e.t, "x")
	defer f.Close()
	return e.runAs(unit, uid, []*os.File{f}, append([]string{"publish", name, "--fd", "3"}, flags...)...)
}

// Attack: one uid pins entries from cgroup after cgroup (pins outlive
// their owner: a leak nobody cleans up); max_pinned_per_uid stops it.
func TestFailClosedPinnedPerUID(t *testing.T) {
	e := newFCEnv(t, nil, "[agent]\nmax_pinned_per_uid = 5\n", "a.service", "b.service", "c.service")
	units := []string{"a.service", "b.service", "c.service"}
	for i := 1; i <= 5; i++ {
		if r := e.publishAs(units[i%3], 65534, fmt.Sprint("pin", i), "--pin"); r.code != 0 {
			t.Fatalf("pin %d as uid 65534: %+v", i, r)
		}
	}
	refused(t, "6th pin of uid 65534", e.publishAs("c.service", 65534, "pin6", "--pin"), 7, "uid 65534")
	if r := e.publishAs("c.service", 1000, "pin-other", "--pin"); r.code != 0 {
		t.Errorf("another uid's pin: %+v", r)
	}
}

// Attack: one uid fills the whole store (max_entries) so that not even the
// administrator can publish; the last min(256, max_entries/8) are kept for
// host administrators.
func TestFailClosedAdminReserve(t *testing.T) {
	e := newFCEnv(t, nil, "[agent]\nmax_entries = 16\n", "a.service", "b.service", "admin.service")
	n := 0
	var last result
	for ; n < 17; n++ {
		if last = e.publishAs([]string{"a.service", "b.service"}[n%2], 65534, fmt.Sprint("e", n)); last.code != 0 {
			break
		}
	}
	if n != 14 || last.code != 7 {
		t.Errorf("uid 65534 published %d of max_entries 16 (then exit %d: %s), want 14 and exit 7", n, last.code, last.stderr)
	}
	if r := e.publishAs("admin.service", 0, "admin"); r.code != 0 {
		t.Errorf("root cannot publish once uid 65534 filled the store: %+v", r)
	}
}

// Attack: a container's pins outlive it; the next container under the same
// name starts with a fresh cgroup, and so a fresh default_max_pinned.
func TestFailClosedContainerPinsCountAcrossRestarts(t *testing.T) {
	e := newFCCtrEnv(t, "[agent]\ndefault_max_pinned = 2\n")
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "pin-web"}
	out := e.mustRunc("pin-web-1", e.bundle([]string{"sh", "-c",
		capdIn + ` publish --pin p1 --fd 3 3</data.txt && ` + capdIn + ` publish --pin p2 --fd 3 3</data.txt; echo "two: $?"`}, ann, true))
	if !strings.Contains(out, "two: 0") {
		t.Fatalf("first container's two pins: %q\nagent log:\n%s", out, e.agent.Log)
	}
	e.waitContainers(0)
	out = e.mustRunc("pin-web-2", e.bundle([]string{"sh", "-c", capdIn + ` publish --pin p3 --fd 3 3</data.txt; echo "third: $?"`}, ann, true))
	if !strings.Contains(out, "third: 7") {
		t.Errorf("the same name's third pin after a restart (default_max_pinned = 2): %q", out)
	}
}

// Attack: uid 1000 makes a user namespace (root maps 65536 uids for it)
// and opens connections from 8 of its uids: each counts as a uid of its
// own against max_connections_per_uid. They must count as uid 1000's.
func TestFailClosedConnectionsPerUserNamespaceOwner(t *testing.T) {
	e := newFCEnv(t, nil, "[agent]\nmax_connections_per_uid = 4\n")
	helper := attacker(t)
	ns := exec.Command("setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", "unshare", "--user", "sleep", "300")
	if err := ns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Process.Kill(); ns.Wait() })
	pid := strconv.Itoa(ns.Process.Pid)
	self, _ := os.Readlink("/proc/self/ns/user")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		userNS, _ := os.Readlink("/proc/" + pid + "/ns/user")
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		if userNS != "" && userNS != self && string(comm) == "sleep\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("uid 1000 did not make its user namespace (unprivileged user namespaces must be enabled: sysctl user.max_user_namespaces)")
		}
	}
	for _, m := range []string{"uid_map", "gid_map"} {
		if err := os.WriteFile("/proc/"+pid+"/"+m, []byte("0 200000 65536\n"), 0); err != nil {
			t.Fatalf("write %s: %v", m, err)
		}
	}

	type conn struct {
		cmd  *exec.Cmd
		line chan string
	}
	var conns []conn
	for i := 1; i <= 8; i++ {
		cmd := exec.Command("nsenter", "-t", pid, "-U", "--", "setpriv", "--reuid", strconv.Itoa(i), "--regid", strconv.Itoa(i), "--clear-groups", helper)
		cmd.Env = e.agent.Env("CAPD_FC_ROLE=hold")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cmd.StdinPipe(); err != nil { // closed by Wait: ends the hold
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c := conn{cmd, make(chan string, 1)}
		go func() {
			l, _ := bufio.NewReader(stdout).ReadString('\n')
			c.line <- strings.TrimSpace(l)
			io.Copy(io.Discard, stdout)
		}()
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		conns = append(conns, c)
	}
	admitted, busy := 0, 0
	var lines []string
	for i, c := range conns {
		var l string
		select {
		case l = <-c.line:
		case <-time.After(10 * time.Second):
			t.Fatalf("connection %d said nothing in 10s", i+1)
		}
		lines = append(lines, l)
		switch {
		case strings.HasPrefix(l, "admitted"):
			admitted++
			if !strings.HasSuffix(l, " "+strconv.Itoa(200000+i+1)) {
				t.Errorf("connection %d: %q, want the agent to see uid %d", i+1, l, 200000+i+1)
			}
		case strings.Contains(l, "busy"):
			busy++
		}
	}
	if admitted == 0 || admitted > 4 || admitted+busy != 8 {
		t.Errorf("8 connections from uid 1000's user namespace: %d admitted, %d busy; want at most 4 admitted, the rest busy:\n%s",
			admitted, busy, strings.Join(lines, "\n"))
	}
}

// lingeringSocket returns a connected loopback TCP socket with SO_LINGER
// {1, 60}, its send buffer and its peer's receive buffer full, in blocking
// mode: closing its last copy blocks up to 60 s. The peer never reads; it
// is closed (ending the linger with a reset) when the test ends.
func lingeringSocket(t *testing.T) *os.File {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "lingering")
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: l.Addr().(*net.TCPAddr).Port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		f.Close()
		t.Fatal(err)
	}
	peer, err := l.Accept()
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 60})
	unix.SetNonblock(fd, true)
	chunk := make([]byte, 1<<16)
	for {
		if _, err := unix.Write(fd, chunk); err != nil {
			break // EAGAIN: both buffers are full
		}
	}
	unix.SetNonblock(fd, false)
	return f
}

// Attack: an unprivileged service jams the agent's closer. A TCP socket
// lingering on data its peer never reads blocks close(2) for a minute: one
// such drop occupies the closer goroutine, 300 drops of its own entries
// (one expiry each) fill the closer's bounded queue, and a second
// lingering socket's drop is then closed inline by the cgroup watcher. No
// other owner's entry is dropped any more, and SIGTERM hangs.
func TestFailClosedLingerDoesNotJamTheAgent(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy, "linger1.service", "linger2.service", "ttl.service", "victim.service", "rpm-ostreed.service")
	for _, u := range []string{"linger1.service", "linger2.service"} {
		s := lingeringSocket(t)
		if r := e.runAs(u, 65534, []*os.File{s}, "publish", "stuck", "--fd", "3"); r.code != 0 {
			t.Fatalf("publish the lingering socket as uid 65534 in %s: %+v", u, r)
		}
		s.Close() // the agent holds the last copy
	}
	e.cgs["linger1.service"].Kill(t) // the closer blocks in close(2)
	e.waitNames("", "linger2.service:stuck")

	// 300 drops, each an expiry of its own, by uid 65534 in ttl.service.
	pub := e.cgs["ttl.service"].Command(attacker(t))
	pub.Env = e.agent.Env("CAPD_FC_ROLE=publish-ttl", "CAPD_FC_N=300", "CAPD_FC_TTL_MS=500", "CAPD_FC_STEP_MS=4")
	pub.SysProcAttr.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("publish 300 entries with a TTL: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(10 * time.Second); e.names("") != "linger2.service:stuck"; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the TTL entries did not expire: %q", e.names(""))
		}
	}
	e.cgs["linger2.service"].Kill(t) // with the queue full, released inline

	// Another owner's unpinned entry still goes with its owner.
	e.publishFile("victim.service", "plain", "x")
	e.cgs["victim.service"].Kill(t)
	start := time.Now()
	for e.names("") != "" {
		if time.Since(start) > 5*time.Second {
			t.Errorf("victim.service's unpinned entry is not dropped 5s after its cgroup emptied: %q", e.names(""))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Revoke and expiry still work.
	e.publishFile("rpm-ostreed.service", "revoked", "x")
	e.mustRun("rpm-ostreed.service", nil, "revoke", "revoked")
	e.publishFile("rpm-ostreed.service", "expiring", "x", "--ttl", "300ms")
	start = time.Now()
	for strings.Contains(e.names(""), "expiring") || strings.Contains(e.names(""), "revoked") {
		if time.Since(start) > 5*time.Second {
			t.Errorf("revoke or expiry stalled: %q", e.names(""))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// And the agent still stops on SIGTERM.
	done := make(chan struct{})
	go func() { e.agent.Cmd.Wait(); close(done) }()
	e.agent.Cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("the agent did not stop within 10s of SIGTERM")
		e.agent.Cmd.Process.Kill()
		<-done
	}
}

// ---- E. Logging ----

// Attack: one unprivileged connection floods the agent with denied
// acquires; each denial is a log line (disk, journal rate limits that
// then hide everyone else's lines).
func TestFailClosedDenialLogIsBounded(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy, "rpm-ostreed.service", "stranger.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "x")
	before := strings.Count(e.agent.Log.String(), "\n")
	flood := e.cgs["stranger.service"].Command(attacker(t))
	flood.Env = e.agent.Env("CAPD_FC_ROLE=flood", "CAPD_FC_N=20000", "CAPD_FC_REF=rpm-ostreed.service:zincati-fd")
	flood.SysProcAttr.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
	out, err := flood.Output()
	if err != nil {
		t.Fatalf("flood: %v\n%s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	log := e.agent.Log.String()
	lines := strings.Count(log, "\n") - before
	t.Logf("flood %s: %d new log lines", strings.TrimSpace(string(out)), lines)
	if lines > 500 {
		t.Errorf("a flood of denied acquires from one peer made %d log lines, want a few hundred at most", lines)
	}
	if !strings.Contains(log, "suppressed") {
		t.Errorf("the agent does not say it suppressed the peer's denial lines")
	}
}

// ---- F. Dangerous kinds ----

// Attack: a host service publishes a directory fd (of /) and an O_PATH fd;
// a container granted them walks out of its root through
// /proc/self/fd/3/.. and reads host files. Directories and O_PATH fds are
// delivered only to grants that name the kind in allow_kinds.
func TestFailClosedDirectoryAndPathKinds(t *testing.T) {
	const grant = "[[grant]]\nconsumer = \"container:web-kinds\"\nacquire = [\"kinds.service:tree\", \"kinds.service:handle\"]\n"
	e := newFCCtrEnv(t, grant)
	kinds := testutil.NewCgroup(t, "kinds.service")
	kinds.Keep(t)
	e.cgs["kinds.service"] = kinds
	marker := filepath.Join(t.TempDir(), "host-only")
	if err := os.WriteFile(marker, []byte("host file"), 0o644); err != nil {
		t.Fatal(err)
	}
	dirFD, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := os.NewFile(uintptr(dirFD), "/")
	defer dir.Close()
	pathFD, err := unix.Open(marker, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	path := os.NewFile(uintptr(pathFD), marker)
	defer path.Close()
	e.mustRun("kinds.service", []*os.File{dir}, "publish", "tree", "--fd", "3")
	e.mustRun("kinds.service", []*os.File{path}, "publish", "handle", "--fd", "3")

	script := `echo container > /etc/hostname
out=$(` + capdIn + ` acquire kinds.service:tree -- cat /proc/self/fd/3` + marker + ` 2>&1); echo "dir: $? $out"
out=$(` + capdIn + ` acquire kinds.service:handle -- cat /proc/self/fd/3 2>&1); echo "path: $? $out"
echo "own hostname: $(cat /etc/hostname)"`
	ann := map[string]string{"io.capd.acquire": "kinds.service:tree", "io.capd.name": "web-kinds"}
	out := e.mustRunc("kinds-1", e.bundle([]string{"sh", "-c", script}, ann, false))
	t.Logf("container output:\n%s", out)
	if strings.Contains(out, "host file") {
		t.Errorf("the container read a host file through the directory or O_PATH entry:\n%s", out)
	}
	for _, want := range [][]string{{"dir: 4", "dir", "allow_kinds"}, {"path: 4", "path", "allow_kinds"}} {
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, want[0][:5]) {
				line = l
			}
		}
		if !strings.HasPrefix(line, want[0]) || !strings.Contains(line[len(want[0]):], want[1]) || !strings.Contains(line, want[2]) {
			t.Errorf("container acquiring the %s entry: %q, want exit 4 naming %q and %q", want[1], line, want[1], want[2])
		}
	}

	// A grant that names the kind delivers the directory.
	waitReload(t, e.agent, grant+"allow_kinds = [\"dir\"]\n")
	e.waitContainers(0)
	out = e.mustRunc("kinds-2", e.bundle([]string{"sh", "-c", script}, ann, false))
	if !strings.Contains(out, "dir: 0 host file") {
		t.Errorf("with allow_kinds = [\"dir\"] the directory is not delivered:\n%s", out)
	}
	if !strings.Contains(out, "path: 4") {
		t.Errorf("allow_kinds = [\"dir\"] also delivered the O_PATH fd:\n%s", out)
	}
}

// ---- G. Smaller holes ----

// Attack: a cgroup named like a unit below a slice that systemd would
// never create there (x.slice directly below the test's slice: systemd
// names nested slices PARENT-x.slice) claims that unit's identity, and
// with it the unit's entries and grants.
func TestFailClosedIdentityNeedsSystemdShape(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy+"\n[[grant]]\nconsumer = \"rpm-ostreed.service\"\nacquire = [\"db.service:db-fd\"]\n", "rpm-ostreed.service", "db.service")
	impostor := testutil.NewCgroup(t, "x.slice/rpm-ostreed.service")
	impostor.Keep(t)
	e.cgs["impostor"] = impostor
	e.publishFile("rpm-ostreed.service", "zincati-fd", "the real unit's")
	e.publishFile("db.service", "db-fd", "granted to rpm-ostreed.service")
	if who := strings.TrimSpace(e.mustRun("impostor", nil, "whoami").stdout); who == "rpm-ostreed.service" {
		t.Errorf("a process in %s is %s", impostor.Path, who)
	}
	refused(t, "the impostor acquiring the unit's own entry", e.run("impostor", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true"), 4)
	refused(t, "the impostor acquiring the unit's grant", e.run("impostor", nil, "acquire", "db.service:db-fd", "--", "true"), 4)
}

// Attack: a container named foo.service matches the service pattern
// "*.service" ('*' crosses the "container:" prefix).
func TestFailClosedContainerIsNotAService(t *testing.T) {
	e := newFCCtrEnv(t, "[[grant]]\nconsumer = \"*.service\"\nacquire = [\"rpm-ostreed.service:zincati-fd\"]\n")
	script := `test -x ` + capdIn + ` || { echo "no capd: not registered"; exit 0; }
` + capdIn + ` whoami
` + capdIn + ` acquire rpm-ostreed.service:zincati-fd -- cat /proc/self/fd/3; echo " acquire: $?"`
	out := e.mustRunc("svc-ctr", e.bundle([]string{"sh", "-c", script},
		map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "foo.service"}, true))
	// Refusing to register the name is a refusal too.
	if !strings.Contains(out, "no capd: not registered") && !strings.Contains(out, "acquire: 4") {
		t.Errorf("a container named foo.service acquiring an entry granted to *.service:\n%s", out)
	}
}

// Attack: a cgroup name with terminal escape sequences reaches the
// administrator's terminal through list, status and audit.
func TestFailClosedNoControlBytesInOutput(t *testing.T) {
	e := newFCEnv(t, nil, seedPolicy)
	cg := testutil.NewCgroup(t, "ctl\x1b]0;x\x07\x1b[31m")
	cg.Keep(t)
	e.cgs["ctl"] = cg
	e.publishFile("ctl", "escape", "x")
	for _, args := range [][]string{{"list"}, {"status"}, {"audit"}} {
		out := e.mustRun("", nil, args...).stdout
		for i := 0; i < len(out); i++ {
			if c := out[i]; (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f {
				t.Errorf("capd %s prints byte %#x at %d: %q", args[0], c, i, out)
				break
			}
		}
	}
}

// Attack: on the /proc fallback (an agent without CAP_DAC_READ_SEARCH
// cannot resolve cgroup ids), "/proc/PID/cgroup" marks removed cgroups
// with " (deleted)"; a cgroup literally named "zincati.service (deleted)"
// is read as zincati.service.
func TestFailClosedDeletedSuffixIsNotStripped(t *testing.T) {
	e := newFCEnv(t, []string{"setpriv", "--bounding-set=-dac_read_search", "--inh-caps=-dac_read_search", "--"}, seedPolicy, "rpm-ostreed.service")
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.agent.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if eff, _ := statusCaps(t, string(st)); eff&(1<<unix.CAP_DAC_READ_SEARCH) != 0 {
		t.Fatalf("the agent still holds CAP_DAC_READ_SEARCH: CapEff %#x", eff)
	}
	cg := testutil.NewCgroup(t, "zincati.service (deleted)")
	cg.Keep(t)
	e.cgs["deleted"] = cg
	e.publishFile("rpm-ostreed.service", "zincati-fd", "x")
	if who := strings.TrimSpace(e.mustRun("deleted", nil, "whoami").stdout); who == "zincati.service" {
		t.Errorf("a process in %q is %s", cg.Path, who)
	}
	refused(t, "acquiring zincati.service's grant from the \"(deleted)\" cgroup", e.run("deleted", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true"), 4)
}

// Attack: during a SIGUSR2 hand-off the agent execs itself, and exec makes
// it dumpable again until the new process turns that off. Root without
// CAP_SYS_PTRACE, but with every capability the agent has, may then
// pidfd_getfd the entries it holds.
func TestFailClosedHandoffIsNeverDumpable(t *testing.T) {
	agentCaps := []string{"setpriv", "--bounding-set=-sys_ptrace,-dac_read_search", "--inh-caps=-sys_ptrace,-dac_read_search", "--"}
	e := newFCEnv(t, agentCaps, seedPolicy, "rpm-ostreed.service")
	pid := e.agent.Cmd.Process.Pid
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	_, agentPrm := statusCaps(t, string(st))
	eff, prm := capSets(t, noPtrace)
	if prm&agentPrm != agentPrm || eff&(1<<capSysPtrace) != 0 {
		t.Fatalf("the attacker's capabilities (%#x) must include the agent's (%#x) and lack CAP_SYS_PTRACE", prm, agentPrm)
	}
	mark := filepath.Join(t.TempDir(), "entry-file")
	if err := os.WriteFile(mark, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		f, err := os.Open(mark)
		if err != nil {
			t.Fatal(err)
		}
		e.mustRun("rpm-ostreed.service", []*os.File{f}, "publish", fmt.Sprint("e", i), "--fd", "3", "--pin")
		f.Close()
	}

	args := append(append([]string{}, noPtrace[1:]...), attacker(t))
	steal := exec.Command(noPtrace[0], args...)
	ready := filepath.Join(t.TempDir(), "ready")
	steal.Env = append(os.Environ(), "CAPD_FC_ROLE=steal", "CAPD_FC_PID="+strconv.Itoa(pid), "CAPD_FC_MARK="+mark, "CAPD_FC_READY="+ready)
	stop, err := steal.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	steal.Stdout, steal.Stderr = &out, &out
	if err := steal.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { steal.Process.Kill(); steal.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the attacker did not start in 10s: %s", out.String())
		}
	}
	// An agent that refuses the hand-off (it says "no hand-off" and
	// serves on) exposes nothing either.
	const handoffs = 10
	refusals := 0
	for i := 0; i < handoffs; i++ {
		// Wait until the new process serves: the Go runtime ignores
		// SIGUSR2 until the agent takes signals.
		served, refused := strings.Count(e.agent.Log.String(), "agent serving"), strings.Count(e.agent.Log.String(), "no hand-off")
		if err := e.agent.Cmd.Process.Signal(unix.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			log := e.agent.Log.String()
			if strings.Count(log, "no hand-off") > refused {
				refusals++
				break
			}
			if strings.Count(log, "agent serving") > served {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("hand-off %d: the agent neither served again nor refused in 10s; log:\n%s", i+1, log)
			}
		}
	}
	stop.Close()
	steal.Wait()
	var res struct {
		Rounds, Got int
		Stolen      []string
	}
	if err := json.Unmarshal([]byte(out.String()), &res); err != nil {
		t.Fatalf("attacker output %q: %v", out.String(), err)
	}
	t.Logf("attacker: %d rounds, %d fds obtained during %d hand-offs (%d refused)", res.Rounds, res.Got, handoffs, refusals)
	e.mustRun("", nil, "whoami") // still serving
	if res.Rounds == 0 {
		t.Fatal("the attacker never ran")
	}
	if len(res.Stolen) > 0 {
		t.Errorf("root without CAP_SYS_PTRACE took entries from the agent during hand-offs: %v", res.Stolen)
	}
}
