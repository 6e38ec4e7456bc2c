package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

// machine is a real systemd (PID 1 of a systemd-nspawn container booting
// this host's OS on a tmpfs, see ../shared/recipes) with capd's units.
type machine struct {
	t     testing.TB
	nspwn *exec.Cmd
	pid1  int
	root  string // the container's / from the host
}

// startMachine boots systemd in systemd-nspawn with args (then -b and
// systemd.firstboot=off), waits until it is running, and kills its PID 1
// when the test ends: SIGKILL to systemd-nspawn alone leaves the container
// running, its PID 1 takes the whole pid namespace with it.
func startMachine(t testing.TB, args ...string) *machine {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		t.Fatalf("this test needs systemd-nspawn (apt-get install systemd-container; scripts/install-test-deps.sh): %v", err)
	}
	m := &machine{t: t}
	m.nspwn = exec.Command("systemd-nspawn", append(args, "-b", "--", "systemd.firstboot=off")...)
	var log bytes.Buffer
	m.nspwn.Stdout, m.nspwn.Stderr = &log, &log
	if err := m.nspwn.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m.pid1 > 1 {
			syscall.Kill(m.pid1, syscall.SIGKILL)
		}
		m.nspwn.Process.Kill()
		m.nspwn.Wait()
	})
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if m.pid1 == 0 {
			out, _ := exec.Command("pgrep", "-P", strconv.Itoa(m.nspwn.Process.Pid), "-x", "systemd").Output()
			m.pid1, _ = strconv.Atoi(strings.TrimSpace(string(out)))
		}
		if m.pid1 != 0 {
			out, _ := m.cmd("systemctl", "is-system-running").Output()
			if s := strings.TrimSpace(string(out)); s == "running" || s == "degraded" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd in systemd-nspawn did not come up in 60s:\n%s", log.String())
		}
	}
	m.root = fmt.Sprintf("/proc/%d/root", m.pid1)
	return m
}

func bootMachine(t testing.TB) *machine {
	t.Helper()
	m := startMachine(t, "--volatile=yes", "-D", "/", "--register=no", "--keep-unit", "-M", fmt.Sprintf("capdtest%d", os.Getpid()))
	// capd as /run/capd-bin, and beside it capd-full, which it executes.
	for src, dst := range map[string]string{capd: "/run/capd-bin", filepath.Join(filepath.Dir(capd), "capd-full"): "/run/capd-full"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(m.root+dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{"capd.service", "capd.socket"} {
		unit, err := os.ReadFile(filepath.Join("..", "dist", u))
		if err != nil {
			t.Fatal(err)
		}
		m.write("/run/systemd/system/"+u, strings.ReplaceAll(string(unit), "/usr/bin/capd", "/run/capd-bin"), 0o644)
	}
	m.must("systemctl", "daemon-reload")
	m.must("systemctl", "start", "capd.socket", "capd.service")
	return m
}

func (m *machine) write(path, content string, mode os.FileMode) {
	m.t.Helper()
	if mode == 0 {
		return
	}
	if err := os.MkdirAll(filepath.Dir(m.root+path), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(m.root+path, []byte(content), mode); err != nil {
		m.t.Fatal(err)
	}
}

func (m *machine) cmd(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(m.pid1), "-a"}, args...)...)
}

func (m *machine) must(args ...string) string {
	m.t.Helper()
	out, err := m.cmd(args...).CombinedOutput()
	if err != nil {
		j, _ := m.cmd("journalctl", "--no-pager", "-n", "40").CombinedOutput()
		m.t.Fatalf("%v: %v\n%s\njournal:\n%s", args, err, out, j)
	}
	return string(out)
}

// unit runs args as a transient service called name and returns its output.
func (m *machine) unit(name string, args ...string) string {
	m.t.Helper()
	return m.must(append([]string{"systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--unit", name}, args...)...)
}

func (m *machine) mainPID() int {
	m.t.Helper()
	pid, _ := strconv.Atoi(strings.TrimSpace(m.must("systemctl", "show", "-p", "MainPID", "--value", "capd.service")))
	return pid
}

// Under a real systemd: an entry survives kill -9 of the agent (systemd
// restarts it and hands the fd store back), systemctl restart, an in-place
// hand-off (SIGUSR2) followed by kill -9, and a reload; the seed's pair
// runs as real units, the consumer through ExecStart=capd acquire.
func TestSystemdKeepsEntries(t *testing.T) {
	m := bootMachine(t)
	m.unit("pub", "sh", "-c", `echo precious > /run/precious && exec 3</run/precious && exec /run/capd-bin publish --pin keep --fd 3`)
	read := func() string {
		return m.unit("pub", "/run/capd-bin", "acquire", "pub.service:keep", "--", "cat", "/proc/self/fd/3")
	}
	if got := read(); got != "precious\n" {
		t.Fatalf("before: %q", got)
	}
	old := m.mainPID()
	m.kill9(old)
	deadline := time.Now().Add(20 * time.Second)
	for pid := m.mainPID(); pid == 0 || pid == old; pid = m.mainPID() {
		if time.Now().After(deadline) {
			t.Fatal("systemd did not restart the agent")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := read(); got != "precious\n" {
		t.Fatalf("after kill -9: %q", got)
	}
	// The agent logs natively to the journal: fields of their own.
	if !strings.Contains(m.must("journalctl", "-u", "capd", "--no-pager", "-o", "cat", "CAPD_ENTRIES=1"), "restored entries from systemd's fd store") {
		t.Error("the journal does not say (with CAPD_ENTRIES=1) that the entry was restored")
	}
	// systemctl restart: systemd keeps the fd store across a restart job.
	m.must("systemctl", "restart", "capd.service")
	if got := read(); got != "precious\n" {
		t.Fatalf("after systemctl restart: %q", got)
	}
	// An upgrade in place: SIGUSR2 to the main process, same pid; then
	// kill -9 again, which must find the store the new process keeps.
	pid := m.mainPID()
	m.must("systemctl", "kill", "--kill-whom=main", "--signal=SIGUSR2", "capd.service")
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(m.must("journalctl", "-u", "capd", "--no-pager"), "restored entries from the previous agent process"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no hand-off after SIGUSR2")
		}
	}
	if got := read(); got != "precious\n" || m.mainPID() != pid {
		t.Fatalf("after the hand-off: %q, main pid %d (was %d)", got, m.mainPID(), pid)
	}
	m.kill9(pid)
	for deadline := time.Now().Add(20 * time.Second); m.mainPID() == 0 || m.mainPID() == pid; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("systemd did not restart the agent after the hand-off")
		}
	}
	if got := read(); got != "precious\n" {
		t.Fatalf("after hand-off and kill -9: %q", got)
	}

	// The seed scenario as units, policy through a reload.
	m.write("/etc/capd/capd.toml", "[[grant]]\nconsumer = \"zincati.service\"\nacquire = [\"rpm-ostreed.service:zincati-fd\"]\n", 0o644)
	m.must("systemctl", "reload", "capd.service")
	m.write("/run/systemd/system/rpm-ostreed.service", `[Service]
ExecStart=/bin/sh -c 'echo from-rpm-ostreed > /run/z && exec 3</run/z && /run/capd-bin publish zincati-fd --fd 3 && exec sleep infinity'
`, 0o644)
	m.write("/run/systemd/system/zincati.service", `[Unit]
After=rpm-ostreed.service
[Service]
ExecStart=/run/capd-bin acquire rpm-ostreed.service:zincati-fd -- /bin/sh -c 'cat /proc/self/fd/3 > /run/zincati.out; echo "$LISTEN_FDS $LISTEN_FDNAMES" >> /run/zincati.out; exec sleep infinity'
`, 0o644)
	m.must("systemctl", "daemon-reload")
	m.must("systemctl", "start", "rpm-ostreed.service")
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(m.must("/run/capd-bin", "list"), "zincati-fd"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("rpm-ostreed.service did not publish")
		}
	}
	m.must("systemctl", "start", "zincati.service")
	var out []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, _ = os.ReadFile(m.root + "/run/zincati.out")
		if bytes.Count(out, []byte("\n")) >= 2 || time.Now().After(deadline) {
			break
		}
	}
	if string(out) != "from-rpm-ostreed\n1 zincati-fd\n" {
		t.Fatalf("zincati.service got %q", out)
	}
	if got := read(); got != "precious\n" {
		t.Fatalf("after reload: %q", got)
	}
}
