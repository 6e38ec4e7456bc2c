package tests

import (
	"bytes"
	"encoding/json"
	"io"
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

const seedPolicy = `
[[grant]]
consumer = "zincati.service"
acquire  = ["rpm-ostreed.service:zincati-fd", "rpm-ostreed.service:foo-op-fd", "rpm-ostreed.service:opt-*"]

[[grant]]
consumer = "other.service"
acquire  = ["rpm-ostreed.service:*"]
`

// env is one test's agent plus service cgroups.
type env struct {
	t     testing.TB
	agent *testutil.Agent
	cgs   map[string]*testutil.Cgroup
}

func newEnv(t testing.TB, policy string, units ...string) *env {
	t.Helper()
	testutil.RequireRoot(t)
	return newEnvWith(t, testutil.StartAgent(t, capd, policy), units...)
}

// newEnvWith is newEnv with an agent already started.
func newEnvWith(t testing.TB, a *testutil.Agent, units ...string) *env {
	t.Helper()
	e := &env{t: t, agent: a, cgs: map[string]*testutil.Cgroup{}}
	for _, u := range units {
		cg := testutil.NewCgroup(t, u)
		cg.Keep(t)
		e.cgs[u] = cg
	}
	return e
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs capd ARGS inside the unit's cgroup ("" for the test's own
// cgroup), with extra fds at 3, 4, ...
func (e *env) run(unit string, extra []*os.File, args ...string) result {
	e.t.Helper()
	return e.runAs(unit, 0, extra, args...)
}

// runAs is run with another uid (0 keeps root).
func (e *env) runAs(unit string, uid uint32, extra []*os.File, args ...string) result {
	e.t.Helper()
	return e.runBin(unit, uid, nil, extra, capd, args...)
}

// runBin is runAs of any binary, with stdin (nil: none).
func (e *env) runBin(unit string, uid uint32, stdin io.Reader, extra []*os.File, bin string, args ...string) result {
	e.t.Helper()
	var cmd *exec.Cmd
	if unit == "" {
		cmd = exec.Command(bin, args...)
	} else {
		cmd = e.cgs[unit].Command(bin, args...)
	}
	cmd.Env = e.agent.Env()
	cmd.Stdin = stdin
	cmd.ExtraFiles = extra
	if uid != 0 {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run %s %v: %v", bin, args, err)
	}
	return r
}

func (e *env) mustRun(unit string, extra []*os.File, args ...string) result {
	e.t.Helper()
	r := e.run(unit, extra, args...)
	if r.code != 0 {
		e.t.Fatalf("capd %v in %q: exit %d\nstdout: %s\nstderr: %s\nagent log:\n%s", args, unit, r.code, r.stdout, r.stderr, e.agent.Log)
	}
	return r
}

func (e *env) publishFile(unit, name, content string, flags ...string) {
	e.t.Helper()
	f := tempFile(e.t, content)
	defer f.Close()
	e.mustRun(unit, []*os.File{f}, append([]string{"publish", name, "--fd", "3"}, flags...)...)
}

func tempFile(t testing.TB, content string) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func expectFail(t *testing.T, r result, code int, words ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	for _, w := range words {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr %q does not mention %q", r.stderr, w)
		}
	}
}

func TestWhoamiIsTheUnit(t *testing.T) {
	e := newEnv(t, seedPolicy, "zincati.service")
	r := e.mustRun("zincati.service", nil, "whoami")
	if got := strings.TrimSpace(r.stdout); got != "zincati.service" {
		t.Fatalf("whoami = %q, want zincati.service", got)
	}
	r = e.mustRun("zincati.service", nil, "whoami", "--json")
	var id cliWhoami
	parseJSON(t, r.stdout, &id)
	if id.Identity != "zincati.service" || id.Cgroup != e.cgs["zincati.service"].Path || id.UID != 0 || id.PID == 0 {
		t.Fatalf("whoami --json = %+v, want cgroup %s", id, e.cgs["zincati.service"].Path)
	}
}

// Cgroup names may hold any byte but '/' and '\n': the human output of
// whoami, list, status and errors prints them escaped, never raw to the
// terminal (--json escapes them as JSON does).
func TestWhoamiEscapesControlCharacters(t *testing.T) {
	const title, clear = "\x1b]0;pwned\x07", "\x1b[2J"
	e := newEnv(t, seedPolicy, title, clear)
	r := e.mustRun(title, nil, "whoami")
	if want := strconv.Quote("cgroup:"+e.cgs[title].Path) + "\n"; r.stdout != want {
		t.Errorf("whoami in %q = %q, want %q", e.cgs[title].Path, r.stdout, want)
	}
	r = e.mustRun(title, nil, "whoami", "--json")
	var id cliWhoami
	if err := parseJSONErr(r.stdout, &id); err != nil || id.Identity != "cgroup:"+e.cgs[title].Path {
		t.Errorf("whoami --json = %q, %v", r.stdout, err)
	}
	e.publishFile(clear, "x", "x")
	owner := strconv.Quote("cgroup:" + e.cgs[clear].Path)
	outputs := map[string]string{
		"whoami":  e.mustRun(title, nil, "whoami").stdout,
		"list":    e.mustRun("", nil, "list").stdout,
		"status":  e.mustRun("", nil, "status").stdout,
		"acquire": e.run(title, nil, "acquire", "cgroup:"+e.cgs[clear].Path+":x", "--", "true").stderr,
	}
	for _, w := range []struct{ cmd, want string }{
		{"list", owner + "  x"},
		{"status", `"/\x1b[2J"`},
		{"acquire", `\x1b]0;pwned\a`},
	} {
		if !strings.Contains(outputs[w.cmd], w.want) {
			t.Errorf("capd %s output lacks %s:\n%s", w.cmd, w.want, outputs[w.cmd])
		}
	}
	for cmd, out := range outputs {
		if strings.ContainsAny(out, "\x1b\x07") {
			t.Errorf("capd %s prints control characters raw: %q", cmd, out)
		}
	}
}

func TestPublishAcquireAcrossCgroups(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "hello from rpm-ostreed\n")
	r := e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "sh", "-c", "cat <&3")
	if r.stdout != "hello from rpm-ostreed\n" {
		t.Fatalf("consumer read %q", r.stdout)
	}
	// The same name published twice is refused, and --replace swaps it.
	f := tempFile(t, "second\n")
	defer f.Close()
	expectFail(t, e.run("rpm-ostreed.service", []*os.File{f}, "publish", "zincati-fd", "--fd", "3"), 6, "exists", "zincati-fd")
	e.mustRun("rpm-ostreed.service", []*os.File{f}, "publish", "zincati-fd", "--fd", "3", "--replace")
	r = e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "sh", "-c", "cat <&3")
	if r.stdout != "second\n" {
		t.Fatalf("after replace consumer read %q", r.stdout)
	}
}

func TestDenied(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service", "stranger.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "x")
	e.publishFile("rpm-ostreed.service", "secret", "x")
	// An ungranted service.
	expectFail(t, e.run("stranger.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true"),
		4, "rpm-ostreed.service:zincati-fd", "permission-denied")
	// A granted service, but not for this entry.
	expectFail(t, e.run("zincati.service", nil, "acquire", "rpm-ostreed.service:secret", "--", "true"),
		4, "rpm-ostreed.service:secret", "permission-denied")
	// Root in the test's own cgroup gets no implicit grant.
	expectFail(t, e.run("", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true"),
		4, "rpm-ostreed.service:zincati-fd", "permission-denied")
	// The owner may always take its own entries back.
	e.mustRun("rpm-ostreed.service", nil, "acquire", "rpm-ostreed.service:secret", "--", "true")
	// A stranger learns nothing about what exists: denied, not not-found.
	expectFail(t, e.run("stranger.service", nil, "acquire", "rpm-ostreed.service:never-published", "--", "true"), 4, "permission-denied")
}

func TestAllowNarrowsPolicy(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service", "other.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "only for zincati\n", "--allow", "zincati.service")
	e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true")
	// other.service is granted rpm-ostreed.service:* by policy, but the
	// owner's allow list excludes it.
	expectFail(t, e.run("other.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true"), 4, "allow list")
	// --allow never widens: stranger matches the pattern but has no grant.
	e.publishFile("rpm-ostreed.service", "foo-op-fd", "x", "--allow", "*.service")
	e.mustRun("other.service", nil, "acquire", "rpm-ostreed.service:foo-op-fd", "--", "true")
}

func TestRevoke(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	e.publishFile("rpm-ostreed.service", "foo-op-fd", "x")
	e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:foo-op-fd", "--", "true")
	// Only the owner's own entries can be revoked by it.
	expectFail(t, e.run("zincati.service", nil, "revoke", "foo-op-fd"), 5, "not-found")
	e.mustRun("rpm-ostreed.service", nil, "revoke", "foo-op-fd")
	expectFail(t, e.run("zincati.service", nil, "acquire", "rpm-ostreed.service:foo-op-fd", "--", "true"),
		5, "rpm-ostreed.service:foo-op-fd", "not-found")
	expectFail(t, e.run("rpm-ostreed.service", nil, "revoke", "foo-op-fd"), 5, "not-found")
}

// An identity can be shared by several uids (processes of one unit running
// as different users): only the publishing uid, or root, may revoke or
// replace an entry.
func TestRevokeAndReplaceNeedThePublishersUID(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service")
	f := tempFile(t, "x")
	defer f.Close()
	if r := e.runAs("rpm-ostreed.service", 65534, []*os.File{f}, "publish", "nobodys", "--fd", "3"); r.code != 0 {
		t.Fatalf("publish as 65534: %+v", r)
	}
	e.publishFile("rpm-ostreed.service", "roots", "x")
	expectFail(t, e.runAs("rpm-ostreed.service", 65534, nil, "revoke", "roots"), 4, "uid 0", "permission-denied")
	expectFail(t, e.runAs("rpm-ostreed.service", 65534, []*os.File{f}, "publish", "roots", "--fd", "3", "--replace"), 4, "uid 0")
	if r := e.runAs("rpm-ostreed.service", 65534, nil, "revoke", "nobodys"); r.code != 0 {
		t.Fatalf("revoke own entry as 65534: %+v", r)
	}
	e.mustRun("rpm-ostreed.service", nil, "revoke", "roots")
}

func TestTTL(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	start := time.Now()
	e.publishFile("rpm-ostreed.service", "foo-op-fd", "x", "--ttl", "1500ms")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "x")
	r := e.mustRun("zincati.service", nil, "list", "--json")
	var l cliList
	parseJSON(t, r.stdout, &l)
	entries := l.Entries
	if len(entries) != 2 || entries[0].Name != "foo-op-fd" || entries[0].Expires == nil || entries[1].Expires != nil {
		t.Fatalf("list = %s", r.stdout)
	}
	if time.Since(start) < time.Second {
		e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:foo-op-fd", "--", "true")
	}
	time.Sleep(time.Until(*entries[0].Expires) + 300*time.Millisecond)
	expectFail(t, e.run("zincati.service", nil, "acquire", "rpm-ostreed.service:foo-op-fd", "--", "true"), 5, "not-found")
	e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true")
}

type listenEnv struct {
	PID            int
	LISTEN_FDS     string
	LISTEN_FDNAMES string
	LISTEN_PID     string
	FDs            map[string]string `json:"fds"`
	Nonblock       map[string]bool   `json:"nonblock"`
}

func (e *env) acquireEnv(unit string, extra []*os.File, args ...string) (listenEnv, result) {
	e.t.Helper()
	self, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := e.cgs[unit].Command(capd, append(append([]string{"acquire"}, args...), "--", self)...)
	cmd.Env = e.agent.Env("CAPD_TEST_ROLE=listen-env", "LISTEN_FDS=9", "LISTEN_FDNAMES=stale", "LISTEN_PID=1")
	cmd.ExtraFiles = extra
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("acquire %v: %v\n%s", args, err, errb.String())
	}
	var le listenEnv
	if err := json.Unmarshal(out.Bytes(), &le); err != nil {
		e.t.Fatalf("role output %q: %v", out.String(), err)
	}
	return le, result{stdout: out.String(), stderr: errb.String()}
}

func TestListenEnvironment(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	a, b := tempFile(t, "a"), tempFile(t, "b")
	defer a.Close()
	defer b.Close()
	e.mustRun("rpm-ostreed.service", []*os.File{a}, "publish", "zincati-fd", "--fd", "3")
	e.mustRun("rpm-ostreed.service", []*os.File{nil, b}, "publish", "foo-op-fd", "--fd", "4")
	// capd itself inherits three unrelated fds at 3, 4, 5: none may leak.
	junk := []*os.File{tempFile(t, "j1"), tempFile(t, "j2"), tempFile(t, "j3")}
	for _, j := range junk {
		defer j.Close()
	}
	le, _ := e.acquireEnv("zincati.service", junk, "rpm-ostreed.service:foo-op-fd", "rpm-ostreed.service:zincati-fd")
	if le.LISTEN_FDS != "2" || le.LISTEN_FDNAMES != "foo-op-fd:zincati-fd" || le.LISTEN_PID != strconv.Itoa(le.PID) {
		t.Fatalf("environment = %+v", le)
	}
	if len(le.FDs) != 2 || le.FDs["3"] != b.Name() || le.FDs["4"] != a.Name() {
		t.Fatalf("inherited fds = %v, want 3 -> %s, 4 -> %s and nothing else", le.FDs, b.Name(), a.Name())
	}
}

// A socket-activated unit running capd acquire keeps its own fds: those
// passed to capd itself (LISTEN_PID is capd's pid) come first with their
// names, the acquired ones after (issue: acquire replaced a unit's socket).
func TestAcquireKeepsSocketActivatedFDs(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	a := tempFile(t, "a")
	defer a.Close()
	e.mustRun("rpm-ostreed.service", []*os.File{a}, "publish", "zincati-fd", "--fd", "3")
	own1, own2 := tempFile(t, "own1"), tempFile(t, "own2")
	defer own1.Close()
	defer own2.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// exec keeps the shell's pid, as systemd's exec of ExecStart= does.
	cmd := e.cgs["zincati.service"].Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" acquire rpm-ostreed.service:zincati-fd -- "$1"`, capd, self)
	cmd.Env = e.agent.Env("CAPD_TEST_ROLE=listen-env", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:admin")
	cmd.ExtraFiles = []*os.File{own1, own2}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	var le listenEnv
	if err := json.Unmarshal(out, &le); err != nil {
		t.Fatalf("role output %q: %v", out, err)
	}
	if le.LISTEN_FDS != "3" || le.LISTEN_FDNAMES != "web:admin:zincati-fd" || le.LISTEN_PID != strconv.Itoa(le.PID) {
		t.Fatalf("environment = %+v", le)
	}
	if le.FDs["3"] != own1.Name() || le.FDs["4"] != own2.Name() || le.FDs["5"] != a.Name() || len(le.FDs) != 3 {
		t.Fatalf("fds = %v, want 3 -> %s, 4 -> %s, 5 -> %s", le.FDs, own1.Name(), own2.Name(), a.Name())
	}
}

// capd publish chain-loads: it publishes, then executes COMMAND with every
// fd and LISTEN_* intact; --listen-fds publishes the socket-activated fds
// under their names; stdin is the default fd; several NAME=FD at once.
func TestPublishChainLoads(t *testing.T) {
	e := newEnv(t, seedPolicy+"\n[[grant]]\nconsumer = \"zincati.service\"\nacquire = [\"rpm-ostreed.service:*\"]\n", "rpm-ostreed.service", "zincati.service")
	web, admin, in := tempFile(t, "web"), tempFile(t, "admin"), tempFile(t, "from-stdin")
	defer web.Close()
	defer admin.Close()
	defer in.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := e.cgs["rpm-ostreed.service"].Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" publish --listen-fds --pin -- "$1"`, capd, self)
	cmd.Env = e.agent.Env("CAPD_TEST_ROLE=listen-env", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:admin")
	cmd.ExtraFiles = []*os.File{web, admin}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("publish --listen-fds: %v\n%s", err, e.agent.Log)
	}
	var le listenEnv
	if err := json.Unmarshal(out, &le); err != nil {
		t.Fatalf("role output %q: %v", out, err)
	}
	if le.LISTEN_FDS != "2" || le.LISTEN_FDNAMES != "web:admin" || le.LISTEN_PID != strconv.Itoa(le.PID) || le.FDs["3"] != web.Name() || le.FDs["4"] != admin.Name() {
		t.Fatalf("the chain-loaded program got %+v", le)
	}
	for name, want := range map[string]string{"web": "web", "admin": "admin"} {
		r := e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:"+name, "--", "cat", "/proc/self/fd/3")
		if r.stdout != want {
			t.Errorf("%s: %q", name, r.stdout)
		}
	}
	// stdin by default.
	cmd = e.cgs["rpm-ostreed.service"].Command(capd, "publish", "stdin-fd")
	cmd.Env, cmd.Stdin = e.agent.Env(), in
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("publish from stdin: %v %s", err, b)
	}
	if r := e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:stdin-fd", "--", "cat", "/proc/self/fd/3"); r.stdout != "from-stdin" {
		t.Errorf("stdin-fd: %q", r.stdout)
	}
	// Two at once.
	e.mustRun("rpm-ostreed.service", []*os.File{web, admin}, "publish", "two-a=3", "two-b=4")
	if r := e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:two-b", "--", "cat", "/proc/self/fd/3"); r.stdout != "admin" {
		t.Errorf("two-b: %q", r.stdout)
	}
	// An unpinned publish from a cgroup whose last process is capd warns.
	lone := testutil.NewCgroup(t, "oneshot.service")
	cmd = lone.Command(capd, "publish", "gone")
	cmd.Env, cmd.Stdin = e.agent.Env(), in
	b, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(b), "warning: capd is the last process") {
		t.Errorf("unpinned publish from a lone capd: %v %q", err, b)
	}
}

// acquire --wait gets an entry published after it started, at once (the
// agent tells it; no polling), fails as not-found when the time runs out,
// and is refused at once where policy refuses.
func TestAcquireWaits(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	cmd := e.cgs["zincati.service"].Command(capd, "acquire", "--wait=20s", "rpm-ostreed.service:zincati-fd", "--", "cat", "/proc/self/fd/3")
	cmd.Env = e.agent.Env()
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("acquire --wait returned before the publish: %v", err)
	default:
	}
	published := time.Now()
	e.publishFile("rpm-ostreed.service", "zincati-fd", "late")
	select {
	case err := <-done:
		if err != nil || out.String() != "late" {
			t.Fatalf("acquire --wait: %v %q", err, out.String())
		}
		t.Logf("delivered %v after the publish", time.Since(published))
	case <-time.After(10 * time.Second):
		t.Fatal("acquire --wait did not return 10s after the publish")
	}
	start := time.Now()
	expectFail(t, e.run("zincati.service", nil, "acquire", "--wait=300ms", "rpm-ostreed.service:foo-op-fd", "--", "true"), 5, "not published")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("--wait=300ms gave up after %v", d)
	}
	start = time.Now()
	expectFail(t, e.run("zincati.service", nil, "acquire", "--wait", "rpm-ostreed.service:ungranted", "--", "true"), 4, "no grant")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a refusal with --wait took %v", d)
	}
	expectFail(t, e.run("zincati.service", nil, "acquire", "--wait=soon", "a.service:x", "--", "true"), 2, "--wait")
}

func TestOptional(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "x")
	// Without --optional an absent entry fails the whole command.
	r := e.run("zincati.service", nil, "acquire", "rpm-ostreed.service:opt-absent", "rpm-ostreed.service:zincati-fd", "--", "true")
	expectFail(t, r, 5, "rpm-ostreed.service:opt-absent", "not-found")
	le, res := e.acquireEnv("zincati.service", nil, "--optional", "rpm-ostreed.service:opt-absent", "rpm-ostreed.service:secret", "rpm-ostreed.service:zincati-fd")
	if le.LISTEN_FDS != "1" || le.LISTEN_FDNAMES != "zincati-fd" || len(le.FDs) != 1 {
		t.Fatalf("environment = %+v", le)
	}
	for _, w := range []string{"opt-absent: not-found", "secret: permission-denied"} {
		if !strings.Contains(res.stderr, w) {
			t.Errorf("stderr %q lacks warning %q", res.stderr, w)
		}
	}
	// Nothing left: the command still runs, without LISTEN_*.
	le, _ = e.acquireEnv("zincati.service", nil, "--optional", "rpm-ostreed.service:opt-absent")
	if le.LISTEN_FDS != "" || le.LISTEN_FDNAMES != "" || le.LISTEN_PID != "" || len(le.FDs) != 0 {
		t.Fatalf("environment with no fds = %+v", le)
	}
}

// TestListVisibility lists as an unprivileged uid, since root sees all.
func TestListVisibility(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service", "stranger.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "x")
	e.publishFile("rpm-ostreed.service", "secret", "x", "--pin")
	e.publishFile("stranger.service", "mine", "x")
	names := func(unit string, uid uint32) string {
		r := e.runAs(unit, uid, nil, "list", "--json")
		if r.code != 0 {
			t.Fatalf("list as %d in %s: %d %s", uid, unit, r.code, r.stderr)
		}
		var l cliList
		parseJSON(t, r.stdout, &l)
		var s []string
		for _, x := range l.Entries {
			s = append(s, x.Owner+":"+x.Name+"/"+x.Kind)
		}
		return strings.Join(s, " ")
	}
	if got := names("zincati.service", 65534); got != "rpm-ostreed.service:zincati-fd/file" {
		t.Errorf("zincati sees %q", got)
	}
	if got := names("stranger.service", 65534); got != "stranger.service:mine/file" {
		t.Errorf("stranger sees %q", got)
	}
	if got := names("", 0); got != "rpm-ostreed.service:secret/file rpm-ostreed.service:zincati-fd/file stranger.service:mine/file" {
		t.Errorf("root sees %q", got)
	}
	r := e.mustRun("", nil, "list")
	if !strings.Contains(r.stdout, "OWNER") || !strings.Contains(r.stdout, "secret") || !strings.Contains(r.stdout, "yes") {
		t.Errorf("table:\n%s", r.stdout)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	e := newEnv(t, seedPolicy, "zincati.service")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"acquire", "a.service:x"}, 2, "missing '-- COMMAND'"},
		{[]string{"acquire", "--", "true"}, 2, "at least one OWNER:NAME"},
		{[]string{"acquire", "noref", "--", "true"}, 2, "not OWNER:NAME"},
		{[]string{"acquire", "a.service:x", "--", "/nonexistent/cmd"}, 127, "/nonexistent/cmd"},
		{[]string{"publish"}, 2, "at least one NAME"},
		{[]string{"publish", "a", "b"}, 2, "NAME=FD"},
		{[]string{"publish", "a=x"}, 2, "not an fd number"},
		{[]string{"publish", "--listen-fds"}, 2, "not socket-activated"},
		{[]string{"publish", "x", "--"}, 2, "missing COMMAND"},
		{[]string{"publish", "x", "--fd", "0", "--", "/nonexistent/cmd"}, 127, "/nonexistent/cmd"},
		{[]string{"publish", "x", "--fd", "9"}, 2, "fd 9 is not open"},
		{[]string{"publish", "bad:name", "--fd", "0"}, 2, "contains"},
		{[]string{"publish", "x", "--fd", "0", "--ttl", "0s"}, 2, "--ttl"},
		{[]string{"revoke"}, 2, "exactly one NAME"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"list", "--bogus"}, 2, "unknown flag"},
	} {
		r := e.run("zincati.service", nil, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("capd %v: exit %d, stderr %q; want exit %d and %q", tc.args, r.code, r.stderr, tc.code, tc.want)
		}
	}
	// No agent on the socket: exit 3.
	cmd := exec.Command(capd, "whoami")
	cmd.Env = append(os.Environ(), "CAPD_SOCKET="+filepath.Join(t.TempDir(), "nothing"))
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Errorf("whoami without agent: %v, want exit 3", err)
	}
}

// TestAcquireKeepsNonblocking: O_NONBLOCK belongs to the open file
// description shared by publisher and consumers; capd acquire must hand it
// on untouched, or the publisher's socket would turn blocking under it.
func TestAcquireKeepsNonblocking(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	sp, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(sp[0]), "mine"), os.NewFile(uintptr(sp[1]), "theirs")
	defer mine.Close()
	e.mustRun("rpm-ostreed.service", []*os.File{theirs}, "publish", "zincati-fd", "--fd", "3")
	theirs.Close()
	le, _ := e.acquireEnv("zincati.service", nil, "rpm-ostreed.service:zincati-fd")
	if !le.Nonblock["3"] {
		t.Fatalf("consumer got fd 3 in blocking mode: %+v", le)
	}
	raw, _ := mine.SyscallConn()
	raw.Control(func(fd uintptr) {
		fl, _ := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if fl&unix.O_NONBLOCK == 0 {
			t.Error("publisher's end lost O_NONBLOCK")
		}
	})
}
