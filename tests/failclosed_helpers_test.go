package tests

import (
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/testutil"
)

// Helpers for the fail-closed attack tests (failclosed_test.go,
// failclosed_systemd_test.go).
//
// Helper programs: main_test.go dispatches CAPD_TEST_ROLE; the roles the
// attacks need are dispatched here instead, by CAPD_FC_ROLE, from a
// package init (which runs before TestMain), so that the test binary (or
// its world-executable copy, attacker(t)) is the helper program.

func init() {
	if role := os.Getenv("CAPD_FC_ROLE"); role != "" {
		os.Exit(runFCRole(role))
	}
}

// runFCRole runs the test binary as one of the attacks' helper programs.
func runFCRole(role string) int {
	switch role {
	case "hold":
		// Open one connection, say whether the agent serves it, and keep
		// it open until stdin closes.
		c, err := client.Dial("")
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		defer c.Close()
		id, err := c.Whoami()
		if err != nil {
			fmt.Println("refused:", err)
			if errors.Is(err, client.ErrBusy) {
				return 8
			}
			return 1
		}
		fmt.Println("admitted", id.Name, id.UID)
		io.Copy(io.Discard, os.Stdin)
		return 0
	case "flood":
		// Send up to CAPD_FC_N acquires of CAPD_FC_REF (denied) for at
		// most 5 s, on one connection (the client reconnects only if the
		// agent closes it).
		n, _ := strconv.Atoi(os.Getenv("CAPD_FC_N"))
		owner, name, _ := strings.Cut(os.Getenv("CAPD_FC_REF"), ":")
		c, err := client.Dial("")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		var sent, denied int
		deadline := time.Now().Add(5 * time.Second)
		for ; sent < n && time.Now().Before(deadline); sent++ {
			fd, err := c.AcquireFD(owner, name)
			if err == nil {
				unix.Close(fd)
			} else if errors.Is(err, client.ErrPermissionDenied) {
				denied++
			}
		}
		json.NewEncoder(os.Stdout).Encode(map[string]int{"sent": sent, "denied": denied})
		return 0
	case "publish-ttl":
		// Publish CAPD_FC_N entries of /dev/null, the i-th expiring after
		// CAPD_FC_TTL_MS + i*CAPD_FC_STEP_MS, so that each expiry is a
		// drop of its own.
		n, _ := strconv.Atoi(os.Getenv("CAPD_FC_N"))
		ttl, _ := strconv.Atoi(os.Getenv("CAPD_FC_TTL_MS"))
		step, _ := strconv.Atoi(os.Getenv("CAPD_FC_STEP_MS"))
		f, err := os.Open("/dev/null")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		c, err := client.Dial("")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		for i := 0; i < n; i++ {
			d := time.Duration(ttl+i*step) * time.Millisecond
			if err := c.Publish(fmt.Sprintf("t%03d", i), f, &client.PublishOptions{TTL: d}); err != nil {
				fmt.Fprintf(os.Stderr, "publish t%03d: %v\n", i, err)
				return 1
			}
		}
		fmt.Println("published", n)
		return 0
	case "steal":
		// Loop pidfd_open + pidfd_getfd over the fds 3..63 of
		// CAPD_FC_PID until stdin closes; report every fd obtained whose
		// target contains CAPD_FC_MARK.
		pid, _ := strconv.Atoi(os.Getenv("CAPD_FC_PID"))
		mark := os.Getenv("CAPD_FC_MARK")
		stop := make(chan struct{})
		go func() { io.Copy(io.Discard, os.Stdin); close(stop) }()
		res := struct {
			Rounds int      `json:"rounds"`
			Got    int      `json:"got"` // any fd at all
			Stolen []string `json:"stolen"`
		}{}
		for {
			select {
			case <-stop:
				json.NewEncoder(os.Stdout).Encode(res)
				return 0
			default:
			}
			res.Rounds++
			if res.Rounds == 1 && os.Getenv("CAPD_FC_READY") != "" {
				os.WriteFile(os.Getenv("CAPD_FC_READY"), nil, 0o644) // the test starts the hand-offs now
			}
			pidfd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				continue
			}
			for fd := 3; fd < 64; fd++ {
				got, err := unix.PidfdGetfd(pidfd, fd, 0)
				if err != nil {
					continue
				}
				res.Got++
				if t, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(got)); mark != "" && strings.Contains(t, mark) {
					res.Stolen = append(res.Stolen, fmt.Sprintf("fd %d: %s", fd, t))
				}
				unix.Close(got)
			}
			unix.Close(pidfd)
		}
	}
	fmt.Fprintf(os.Stderr, "unknown CAPD_FC_ROLE %q\n", role)
	return 2
}

// noCaps runs a command as uid 0 with every capability set empty.
var noCaps = []string{"setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"}

// noPtrace runs a command as root with every capability except
// CAP_SYS_PTRACE.
var noPtrace = []string{"setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"}

// requireTools fails the test loudly unless every tool is on PATH.
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %s (util-linux: setpriv, unshare, nsenter; runc): %v", tool, err)
		}
	}
}

// startAgentVia is testutil.StartAgent with the agent started through
// wrapper (e.g. setpriv dropping capabilities; nil for none), and failing
// at once, with the agent's log, when the agent exits during start (a
// configuration it rejects).
func startAgentVia(t testing.TB, wrapper []string, config string) *testutil.Agent {
	t.Helper()
	dir, err := os.MkdirTemp("", "capd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	a := &testutil.Agent{Socket: filepath.Join(dir, "s"), Config: filepath.Join(dir, "capd.toml"), Log: &testutil.LogBuffer{}}
	if err := os.WriteFile(a.Config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append(append(append([]string{}, wrapper...), capd), "agent", "--config", a.Config, "--socket", a.Socket, "--log-level", "debug")
	a.Cmd = exec.Command(argv[0], argv[1:]...)
	a.Cmd.Stdout, a.Cmd.Stderr = a.Log, a.Log
	if err := a.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	for deadline := time.Now().Add(10 * time.Second); !testutil.Connectable(a.Socket); time.Sleep(5 * time.Millisecond) {
		var info unix.Siginfo
		// WNOWAIT: leave the exit status for Stop's Wait.
		if err := unix.Waitid(unix.P_PID, a.Cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err == nil && info.Signo != 0 {
			time.Sleep(50 * time.Millisecond) // let the log pipe drain
			t.Fatalf("agent %v exited at start; log:\n%s", argv, a.Log)
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not accept connections in 10s; log:\n%s", a.Log)
		}
	}
	return a
}

// newFCEnv is newEnv with the agent started through wrapper and config
// errors reported at once (see startAgentVia).
func newFCEnv(t testing.TB, wrapper []string, config string, units ...string) *env {
	t.Helper()
	testutil.RequireRoot(t)
	requireTools(t, "setpriv", "unshare", "nsenter")
	e := &env{t: t, agent: startAgentVia(t, wrapper, config), cgs: map[string]*testutil.Cgroup{}}
	for _, u := range units {
		cg := testutil.NewCgroup(t, u)
		cg.Keep(t)
		e.cgs[u] = cg
	}
	return e
}

// newFCCtrEnv is newCtrEnv on newFCEnv: rpm-ostreed.service publishes
// zincati-fd ("secret") and other-fd, db.service runs.
func newFCCtrEnv(t testing.TB, config string) *ctrEnv {
	t.Helper()
	requireContainers(t, "runc")
	e := &ctrEnv{env: newFCEnv(t, nil, config, "rpm-ostreed.service", "db.service"), state: t.TempDir(), hook: capd}
	e.publishFile("rpm-ostreed.service", "zincati-fd", "secret")
	e.publishFile("rpm-ostreed.service", "other-fd", "other")
	return e
}

// runVia runs wrapper... capd ARGS in unit's cgroup ("" for the test's
// own) as uid (0 keeps root), with extra fds at 3, 4, ...
func (e *env) runVia(unit string, uid uint32, wrapper []string, extra []*os.File, args ...string) result {
	e.t.Helper()
	argv := append(append(append([]string{}, wrapper...), capd), args...)
	var cmd *exec.Cmd
	if unit == "" {
		cmd = exec.Command(argv[0], argv[1:]...)
	} else {
		cmd = e.cgs[unit].Command(argv[0], argv[1:]...)
	}
	cmd.Env = e.agent.Env()
	cmd.ExtraFiles = extra
	if uid != 0 {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid}
	}
	return execResult(e.t, cmd)
}

// execResult runs cmd to completion and collects its output and exit code.
func execResult(t testing.TB, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return r
}

// capSets returns the effective and permitted capability masks a process
// started through wrapper has (read from its own /proc/self/status).
func capSets(t testing.TB, wrapper []string) (eff, prm uint64) {
	t.Helper()
	argv := append(append([]string{}, wrapper...), "cat", "/proc/self/status")
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return statusCaps(t, string(out))
}

// statusCaps parses CapEff and CapPrm from a /proc/PID/status text.
func statusCaps(t testing.TB, status string) (eff, prm uint64) {
	t.Helper()
	var haveEff, havePrm bool
	for _, l := range strings.Split(status, "\n") {
		k, v, _ := strings.Cut(l, ":")
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		switch {
		case k == "CapEff" && err == nil:
			eff, haveEff = n, true
		case k == "CapPrm" && err == nil:
			prm, havePrm = n, true
		}
	}
	if !haveEff || !havePrm {
		t.Fatalf("no CapEff/CapPrm in:\n%s", status)
	}
	return eff, prm
}

// Capability bits (linux/capability.h).
const (
	capSysPtrace = 19
	capSysAdmin  = 21
)

// refused checks, without stopping the test, that r failed with code and
// that its stderr names every word.
func refused(t testing.TB, what string, r result, code int, words ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", what, r.code, code, r.stdout, r.stderr)
		return
	}
	for _, w := range words {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("%s: stderr %q does not mention %q", what, r.stderr, w)
		}
	}
}

// ociState is a runtime-spec state as a runtime hands it to a hook at
// createRuntime.
func ociState(id string, pid int, bundle string, ann map[string]string) string {
	b, _ := json.Marshal(map[string]any{"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": pid, "bundle": bundle, "annotations": ann})
	return string(b)
}

// fakeBundle writes a bundle directory whose config.json names a rootfs
// and returns it.
func fakeBundle(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"root":{"path":"rootfs"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// hook runs capd hook --socket (through wrapper) with state on stdin.
func (e *env) hook(wrapper []string, state string) result {
	e.t.Helper()
	argv := append(append(append([]string{}, wrapper...), capd), "hook", "--socket", e.agent.Socket)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(state)
	return execResult(e.t, cmd)
}

// containers returns how many containers the agent holds registered, as
// root sees it.
func (e *env) containers() uint64 {
	e.t.Helper()
	var st cliStatus
	parseJSON(e.t, e.mustRun("", nil, "status", "--json").stdout, &st)
	return st.Containers
}

// startIn starts name args in cg and returns it; the process is killed
// and reaped when the test ends.
func startIn(t testing.TB, cg *testutil.Cgroup, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := cg.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, cg.Path, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// editSpec rewrites a bundle's config.json through edit.
func editSpec(t testing.TB, bundle string, edit func(spec map[string]any)) {
	t.Helper()
	p := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	edit(spec)
	if b, err = json.MarshalIndent(spec, "", " "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// specRootfs returns the host path of a bundle's root filesystem.
func specRootfs(t testing.TB, bundle string) string {
	t.Helper()
	var root string
	editSpec(t, bundle, func(spec map[string]any) { root = spec["root"].(map[string]any)["path"].(string) })
	return root
}

// waitReload sends the agent its new config and waits until it took it
// (fails at once if the agent rejected it).
func waitReload(t testing.TB, a *testutil.Agent, config string) {
	t.Helper()
	ok, bad := strings.Count(a.Log.String(), "configuration reloaded"), strings.Count(a.Log.String(), "reload failed")
	a.Reload(t, config)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		log := a.Log.String()
		if strings.Count(log, "reload failed") > bad {
			t.Fatalf("the agent rejected the configuration:\n%s\nlog:\n%s", config, log)
		}
		if strings.Count(log, "configuration reloaded") > ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reload after 10s; log:\n%s", log)
		}
	}
}

// cpuTicks returns a process's utime+stime in clock ticks.
func cpuTicks(t testing.TB, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	return u + s
}
