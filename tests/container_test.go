package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

// The container tests run real runc and podman (Debian's runc 1.1 and
// podman 4.3 here) on a busybox-static root filesystem built per test, with
// the static capd binary under test as the OCI hook.

const containerPolicy = `
[[grant]]
consumer = "container:web-*"
acquire  = ["rpm-ostreed.service:zincati-fd"]

[[grant]]
consumer = "db.service"
acquire  = ["container:*:ctr-*"]
`

// podmanFlags are what podman needs on this host (hybrid cgroups, no
// systemd as PID 1, a low RLIMIT_NOFILE hard limit).
var podmanGlobal = []string{"--runtime", "runc", "--cgroup-manager=cgroupfs", "--events-backend=file"}
var podmanRun = []string{"--ulimit", "nofile=10000:10000", "--ulimit", "nproc=1000:1000"}

func requireContainers(t testing.TB, tools ...string) {
	t.Helper()
	testutil.RequireRoot(t)
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %s: install the test packages (scripts/install-test-deps.sh: runc podman busybox-static): %v", tool, err)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatalf("this test needs a static busybox at /bin/busybox (apt-get install busybox-static): %v", err)
	}
}

// newRootfs builds a busybox root filesystem with /data.txt.
func newRootfs(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "proc", "dev", "sys", "run", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "cat", "echo", "sleep", "ls", "true", "test", "id", "printf", "mkdir", "grep"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "data.txt"), []byte("from-the-image"), 0o644)
	return root
}

// ctrEnv is an agent, a publishing service and a place for containers.
type ctrEnv struct {
	*env
	state string // runc --root
	hook  string // the hook as config.json and hooks.d name it
}

func newCtrEnv(t testing.TB, policy string) *ctrEnv {
	t.Helper()
	requireContainers(t, "runc", "podman")
	e := &ctrEnv{env: newEnv(t, policy, "rpm-ostreed.service", "db.service"), state: t.TempDir(), hook: capd}
	e.publishFile("rpm-ostreed.service", "zincati-fd", "secret")
	e.publishFile("rpm-ostreed.service", "other-fd", "other")
	return e
}

// bundle writes a runc bundle running args with the capd hook at
// createRuntime and poststop.
func (e *ctrEnv) bundle(args []string, ann map[string]string, readOnly bool) string {
	e.t.Helper()
	if ann == nil {
		return e.writeBundle(args, nil, "", nil, readOnly)
	}
	// A generous timeout: on a loaded machine the default 5 s can pass, and
	// a container not marked required then starts without capd.
	return e.writeBundle(args, ann, e.hook, []string{"capd", "hook", "--socket", e.agent.Socket, "--timeout", "60s"}, readOnly, "createRuntime", "poststop")
}

// bundleHooks writes a runc bundle (read-only root) running args, with the
// hook path/hookArgs at the given stages.
func (e *ctrEnv) bundleHooks(args []string, ann map[string]string, path string, hookArgs []string, stages ...string) string {
	e.t.Helper()
	return e.writeBundle(args, ann, path, hookArgs, true, stages...)
}

func (e *ctrEnv) writeBundle(args []string, ann map[string]string, path string, hookArgs []string, readOnly bool, stages ...string) string {
	e.t.Helper()
	dir := e.t.TempDir()
	if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		e.t.Fatalf("runc spec: %v\n%s", err, out)
	}
	var spec map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(b, &spec); err != nil {
		e.t.Fatal(err)
	}
	spec["root"] = map[string]any{"path": newRootfs(e.t), "readonly": readOnly}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = args
	hooks := map[string]any{}
	for _, st := range stages {
		hooks[st] = []any{map[string]any{"path": path, "args": hookArgs}}
	}
	spec["hooks"] = hooks
	spec["annotations"] = ann
	b, _ = json.MarshalIndent(spec, "", " ")
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		e.t.Fatal(err)
	}
	return dir
}

// runc runs a container to completion.
func (e *ctrEnv) runc(id, bundle string) result {
	e.t.Helper()
	cmd := exec.Command("runc", "--root", e.state, "run", "--bundle", bundle, id)
	e.t.Cleanup(func() { exec.Command("runc", "--root", e.state, "delete", "-f", id).Run() })
	return e.exec(cmd)
}

func (e *ctrEnv) exec(cmd *exec.Cmd) result {
	e.t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("%v: %v", cmd.Args, err)
	}
	return r
}

func (e *ctrEnv) mustRunc(id, bundle string) string {
	e.t.Helper()
	r := e.runc(id, bundle)
	if r.code != 0 {
		e.t.Fatalf("runc run %s: exit %d\nstdout: %s\nstderr: %s\nagent log:\n%s", id, r.code, r.stdout, r.stderr, e.agent.Log)
	}
	return r.stdout
}

func (e *ctrEnv) status() cliStatus {
	e.t.Helper()
	var st cliStatus
	parseJSON(e.t, e.mustRun("", nil, "status", "--json").stdout, &st)
	return st
}

// waitContainers waits for the agent to hold n registered containers.
func (e *ctrEnv) waitContainers(n uint64) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.status().Containers != n {
		if time.Now().After(deadline) {
			e.t.Fatalf("agent does not hold %d containers after 10s\nagent log:\n%s", n, e.agent.Log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inside is the workload script's preamble: capd as the hook provides it.
const capdIn = "/run/capd/capd"

// A granted fd is read inside a runc container with a read-only root
// filesystem, by the container's identity; an ungranted one is denied;
// poststop leaves nothing registered.
func TestRuncGrantedAndDenied(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	script := capdIn + ` whoami
` + capdIn + ` acquire rpm-ostreed.service:zincati-fd -- sh -c 'echo "$LISTEN_FDS $LISTEN_FDNAMES"; cat /proc/self/fd/3; echo'
` + capdIn + ` acquire rpm-ostreed.service:other-fd -- true
echo "other: $?"`
	out := e.mustRunc("web-1", e.bundle([]string{"sh", "-c", script},
		map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}, true))
	for _, want := range []string{"container:web-1\n", "1 zincati-fd\nsecret\n", "other: 4"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q:\n%s\nagent log:\n%s", want, out, e.agent.Log)
		}
	}
	if !strings.Contains(e.agent.Log.String(), `msg=denied action=acquire identity=container:web-1`) {
		t.Errorf("the denial is not logged:\n%s", e.agent.Log)
	}
	e.waitContainers(0)
}

// An entry published inside a container is acquired by a host service
// (container:NAME:ENTRY) while the container runs, and goes with it when
// the container stops.
func TestRuncContainerPublishes(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	b := e.bundle([]string{"sh", "-c", capdIn + " publish ctr-data --fd 3 3</data.txt && sleep 30"},
		map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "web-2"}, false)
	cmd := exec.Command("runc", "--root", e.state, "run", "--bundle", b, "ctr-2")
	t.Cleanup(func() { exec.Command("runc", "--root", e.state, "delete", "-f", "ctr-2").Run() })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	const host = "rpm-ostreed.service:other-fd rpm-ostreed.service:zincati-fd"
	e.waitNames("db.service", "container:web-2:ctr-data "+host) // root sees all
	if got := e.read("db.service", "container:web-2:ctr-data"); got != "from-the-image" {
		t.Fatalf("host service read %q", got)
	}
	// The container's id is an alias for policy, not an owner name.
	expectFail(t, e.run("db.service", nil, "acquire", "container:ctr-2:ctr-data", "--", "true"), 5, "not-found")
	if err := exec.Command("runc", "--root", e.state, "kill", "ctr-2", "KILL").Run(); err != nil {
		t.Fatal(err)
	}
	<-done
	e.waitNames("db.service", host)
	e.waitContainers(0)
}

// The runtime is SIGKILLed (no poststop) and the container's processes die
// with it: the agent notices that the container's cgroup emptied,
// unregisters the container and drops its unpinned entries.
func TestRuncCleanupWithoutPoststop(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	b := e.bundle([]string{"sh", "-c", capdIn + " publish ctr-data --fd 3 3</data.txt && sleep 60"},
		map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "web-3"}, false)
	cmd := exec.Command("runc", "--root", e.state, "run", "--bundle", b, "ctr-3")
	t.Cleanup(func() { exec.Command("runc", "--root", e.state, "delete", "-f", "ctr-3").Run() })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const host = "rpm-ostreed.service:other-fd rpm-ostreed.service:zincati-fd"
	e.waitNames("db.service", "container:web-3:ctr-data "+host)
	e.waitContainers(1)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	// runc is gone; kill what it left running, as the OOM killer or a
	// stopped scope would.
	mount := strings.TrimSuffix(e.cgs["db.service"].Dir, e.cgs["db.service"].Path)
	if err := os.WriteFile(filepath.Join(mount, "ctr-3", "cgroup.kill"), []byte("1"), 0); err != nil {
		t.Fatalf("kill the orphaned container: %v", err)
	}
	e.waitContainers(0)
	e.waitNames("db.service", host)
	if !strings.Contains(e.agent.Log.String(), "container has no processes left; unregistered") {
		t.Errorf("cleanup did not come from the cgroup emptying:\n%s", e.agent.Log)
	}
}

// io.capd.required=true turns a refused entry or an unreachable agent into
// a failed creation with the reason in runc's error; without it the
// container starts.
func TestRuncRequired(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:other-fd", "io.capd.required": "true"}
	r := e.runc("web-4", e.bundle([]string{"echo", "started"}, ann, false))
	if r.code == 0 || strings.Contains(r.stdout, "started") ||
		!strings.Contains(r.stderr, "requires entries it cannot acquire") || !strings.Contains(r.stderr, "rpm-ostreed.service:other-fd") {
		t.Fatalf("required + ungranted: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	ann["io.capd.required"] = "false"
	if out := e.mustRunc("web-5", e.bundle([]string{"echo", "started"}, ann, false)); !strings.Contains(out, "started") {
		t.Fatalf("not required: %q", out)
	}

	e.agent.Stop()
	ann = map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.required": "true"}
	r = e.runc("web-6", e.bundle([]string{"echo", "started"}, ann, false))
	if r.code == 0 || !strings.Contains(r.stderr, "connect to capd agent") {
		t.Fatalf("required + agent down: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	delete(ann, "io.capd.required")
	if out := e.mustRunc("web-7", e.bundle([]string{"echo", "started"}, ann, false)); !strings.Contains(out, "started") {
		t.Fatalf("agent down, not required: %q", out)
	}
}

// A second container cannot act as the first: its processes have its own
// identity, a registration from inside it is refused even as root, and a
// second container claiming the first one's name is refused. Root inside a
// container is not host root: no revoking others' entries, no audit, no
// status.
func TestSecondContainerCannotActAsFirst(t *testing.T) {
	e := newCtrEnv(t, `
[[grant]]
consumer = "container:web-a"
acquire  = ["rpm-ostreed.service:zincati-fd"]
`)
	a := e.bundle([]string{"sleep", "30"}, map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}, false)
	cmd := exec.Command("runc", "--root", e.state, "run", "--bundle", a, "web-a")
	t.Cleanup(func() { exec.Command("runc", "--root", e.state, "delete", "-f", "web-a").Run() })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { exec.Command("runc", "--root", e.state, "kill", "web-a", "KILL").Run(); cmd.Wait() }()
	e.waitContainers(1)

	forged := `{"ociVersion":"1.0.2","id":"web-a","status":"creating","pid":1,"bundle":"/tmp/b",` +
		`"annotations":{"io.capd.acquire":"rpm-ostreed.service:zincati-fd","io.capd.required":"true"}}`
	script := capdIn + ` whoami
` + capdIn + ` acquire rpm-ostreed.service:zincati-fd -- true; echo "acquire: $?"
mkdir -p /tmp/b && echo '{"root":{"path":"/"}}' > /tmp/b/config.json
echo '` + forged + `' | ` + capdIn + ` hook 2>&1; echo "hook: $?"
` + capdIn + ` revoke --owner rpm-ostreed.service zincati-fd; echo "revoke: $?"
` + capdIn + ` audit >/dev/null; echo "audit: $?"
` + capdIn + ` status >/dev/null; echo "status: $?"`
	out := e.mustRunc("web-b", e.bundle([]string{"sh", "-c", script},
		map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}, false))
	for _, want := range []string{"container:web-b\n", "acquire: 4", "register containers needs a host administrator", "it runs in container web-b", "hook: 4",
		"revoke: 4", "audit: 4", "status: 4"} {
		if !strings.Contains(out, want) {
			t.Errorf("output of web-b lacks %q:\n%s", want, out)
		}
	}
	// Another container under web-a's name, from the host.
	r := e.runc("impostor", e.bundle([]string{"echo", "started"},
		map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.name": "web-a", "io.capd.required": "true"}, false))
	if r.code == 0 || !strings.Contains(r.stderr, "identity container:web-a is registered to container web-a") {
		t.Fatalf("impostor: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}

// podman runs the hook from hooks.d ('capd hook install'): granted fd
// read, ungranted denied, poststop cleanup.
func TestPodmanHooksD(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	hooksDir := t.TempDir()
	e.mustRun("", nil, "hook", "install", "--dir", hooksDir, "--socket", e.agent.Socket)
	store := t.TempDir()
	global := append([]string{"--root", filepath.Join(store, "root"), "--runroot", filepath.Join(store, "run"),
		"--tmpdir", filepath.Join(store, "tmp"), "--hooks-dir", hooksDir}, podmanGlobal...)
	script := capdIn + ` whoami
` + capdIn + ` acquire rpm-ostreed.service:zincati-fd -- sh -c 'cat /proc/self/fd/3; echo'
` + capdIn + ` acquire rpm-ostreed.service:other-fd -- true; echo "other: $?"`
	args := append(append(append(global, "run", "--rm", "--read-only", "--annotation", "io.capd.acquire=rpm-ostreed.service:zincati-fd",
		"--annotation", "io.capd.name=web-pod"), podmanRun...), "--rootfs", newRootfs(t), "sh", "-c", script)
	r := e.exec(exec.Command("podman", args...))
	if r.code != 0 {
		t.Fatalf("podman run: exit %d\nstdout: %s\nstderr: %s\nagent log:\n%s", r.code, r.stdout, r.stderr, e.agent.Log)
	}
	for _, want := range []string{"container:web-pod\n", "secret\n", "other: 4"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("podman container output lacks %q:\n%s", want, r.stdout)
		}
	}
	// An unannotated container is left alone.
	args = append(append(append(global, "run", "--rm"), podmanRun...), "--rootfs", newRootfs(t), "sh", "-c", "test -e /run/capd; echo $?")
	if r := e.exec(exec.Command("podman", args...)); r.code != 0 || r.stdout != "1\n" {
		t.Fatalf("unannotated podman container: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	e.waitContainers(0)
}

// A service hands its fds to a container it starts: capd acquire ... --
// podman run. podman takes LISTEN_FDS meant for it (LISTEN_PID is its pid,
// which exec kept) and passes the fds on: no --preserve-fds, which would
// only make podman warn. The container sees them at 3.. with LISTEN_FDS
// and LISTEN_FDNAMES, and LISTEN_PID=1 (podman rewrites it for the
// container's pid 1). No hook, no registration: the identity that
// acquires is the service.
func TestPodmanPreserveFDs(t *testing.T) {
	e := newCtrEnv(t, `
[[grant]]
consumer = "db.service"
acquire  = ["rpm-ostreed.service:zincati-fd"]
`)
	store := t.TempDir()
	args := []string{"acquire", "rpm-ostreed.service:zincati-fd", "--", "podman", "--root", filepath.Join(store, "root"),
		"--runroot", filepath.Join(store, "run"), "--tmpdir", filepath.Join(store, "tmp")}
	args = append(append(append(args, podmanGlobal...), "run", "--rm"), podmanRun...)
	args = append(args, "--rootfs", newRootfs(t), "sh", "-c", `echo "$LISTEN_FDS $LISTEN_FDNAMES $LISTEN_PID"; cat <&3; echo`)
	r := e.mustRun("db.service", nil, args...)
	if r.stdout != "1 zincati-fd 1\nsecret\n" {
		t.Fatalf("container saw %q\nstderr: %s", r.stdout, r.stderr)
	}
	if strings.Contains(strings.ToLower(r.stderr), "warn") {
		t.Errorf("podman warned: %s", r.stderr)
	}
	if e.status().Containers != 0 {
		t.Fatal("a container without the annotation was registered")
	}
}

// An in-place hand-off (SIGUSR2) keeps container registrations: the
// workload keeps its identity and its socket, and the new agent process
// still notices the container's end.
func TestHandoffKeepsContainers(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	b := e.bundle([]string{"sleep", "30"}, map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}, true)
	cmd := exec.Command("runc", "--root", e.state, "run", "--bundle", b, "web-h")
	t.Cleanup(func() { exec.Command("runc", "--root", e.state, "delete", "-f", "web-h").Run() })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	e.waitContainers(1)
	before := strings.Count(e.agent.Log.String(), "restored entries from the previous agent process")
	e.agent.Cmd.Process.Signal(syscall.SIGUSR2)
	e.agent.WaitLog(t, "restored entries from the previous agent process", before)
	r := e.exec(exec.Command("runc", "--root", e.state, "exec", "web-h", "/run/capd/capd", "acquire",
		"rpm-ostreed.service:zincati-fd", "--", "sh", "-c", `/run/capd/capd whoami; cat /proc/self/fd/3`))
	if r.code != 0 || r.stdout != "container:web-h\nsecret" {
		t.Fatalf("in the container after the hand-off: %+v\nagent log:\n%s", r, e.agent.Log)
	}
	exec.Command("runc", "--root", e.state, "kill", "web-h", "KILL").Run()
	<-done
	e.waitContainers(0)
}

// The hook never mounts where the mount would propagate out of the
// container: an image whose /run leads into a volume mounted with shared
// propagation gets no /run/capd (a required container is not created), and
// nothing appears on the host.
func TestHookRefusesSharedPropagation(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	vol := t.TempDir()
	for _, args := range [][]string{{"--bind", vol, vol}, {"--make-shared", vol}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("umount", "-l", vol).Run() })
	ann := map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.required": "true"}
	b := e.bundle([]string{"echo", "started"}, ann, false)
	cfg := filepath.Join(b, "config.json")
	raw, _ := os.ReadFile(cfg)
	var spec map[string]any
	json.Unmarshal(raw, &spec)
	root := spec["root"].(map[string]any)["path"].(string)
	os.Remove(filepath.Join(root, "run"))
	os.Symlink("/vol", filepath.Join(root, "run"))
	os.Mkdir(filepath.Join(root, "vol"), 0o755)
	spec["mounts"] = append(spec["mounts"].([]any), map[string]any{
		"destination": "/vol", "type": "bind", "source": vol, "options": []string{"rbind", "rshared"}})
	raw, _ = json.Marshal(spec)
	os.WriteFile(cfg, raw, 0o644)
	r := e.runc("web-shared", b)
	if r.code == 0 || !strings.Contains(r.stderr, "shared propagation") {
		t.Fatalf("required container with /run on a shared volume: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), vol+"/capd") {
		t.Fatalf("the hook's mounts reached the host:\n%s", mi)
	}
}

// Registration takes only a fresh container's cgroup: not a service's, not
// one holding other processes besides the init, even from host root.
func TestRegistrationRefusesServicesAndCrowdedCgroups(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	crowd := testutil.NewCgroup(t, "crowd")
	crowd.Keep(t)
	crowd.Keep(t)
	bundle := t.TempDir()
	os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755)
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"root":{"path":"rootfs"}}`), 0o644)
	firstPID := func(cg *testutil.Cgroup) string {
		b, err := os.ReadFile(filepath.Join(cg.Dir, "cgroup.procs"))
		if err != nil || len(strings.Fields(string(b))) == 0 {
			t.Fatalf("procs of %s: %q %v", cg.Path, b, err)
		}
		return strings.Fields(string(b))[0]
	}
	for _, tc := range []struct {
		cg   *testutil.Cgroup
		want string
	}{
		{e.cgs["db.service"], "belongs to db.service"},
		{crowd, "besides the container's init"},
	} {
		state := `{"ociVersion":"1.0.2","id":"fake","status":"creating","pid":` + firstPID(tc.cg) + `,"bundle":"` + bundle +
			`","annotations":{"io.capd.acquire":"rpm-ostreed.service:zincati-fd","io.capd.name":"web-1","io.capd.required":"true"}}`
		cmd := exec.Command(capd, "hook", "--socket", e.agent.Socket)
		cmd.Stdin = strings.NewReader(state)
		r := e.exec(cmd)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("registering %s: exit %d, stderr %q, want %q", tc.cg.Path, r.code, r.stderr, tc.want)
		}
	}
	if e.status().Containers != 0 {
		t.Fatal("a refused registration was kept")
	}
}
