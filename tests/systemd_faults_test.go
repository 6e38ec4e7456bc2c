package tests

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// restartAgent kills the agent with SIGKILL and waits for systemd to start
// a new one.
func (m *machine) killAgent() {
	m.t.Helper()
	old := m.mainPID()
	if old == 0 {
		m.t.Fatal("capd.service has no main process")
	}
	m.kill9(old)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if pid := m.mainPID(); pid != 0 && pid != old && m.active() {
			return
		}
		if time.Now().After(deadline) {
			j, _ := m.cmd("journalctl", "-u", "capd", "--no-pager", "-n", "30").CombinedOutput()
			m.t.Fatalf("systemd did not restart the agent\n%s", j)
		}
	}
}

// entries counts the entries the agent lists for root.
func (m *machine) entries() int {
	m.t.Helper()
	out := m.must("/run/capd-bin", "list")
	return strings.Count(out, "\n") - 1 // minus the header
}

// Under a real systemd: the store never acknowledges more than the fd store
// keeps, survives a crash loop, and acknowledges nothing systemd did not
// confirm.
func TestSystemdFaults(t *testing.T) {
	m := bootMachine(t)

	{ // fd store limit
		// The README once said "max_entries plus one": with 11 and 10, all
		// 10 pinned publishes were acknowledged and none came back.
		m.write("/etc/capd/capd.toml", "[agent]\nmax_entries = 10\n", 0o644)
		m.write("/run/systemd/system/capd.service.d/limit.conf", "[Service]\nFileDescriptorStoreMax=11\n", 0o644)
		m.must("systemctl", "daemon-reload")
		m.must("systemctl", "restart", "capd.service")
		out := m.unit("pub", "sh", "-c", `echo x > /run/f; for i in 1 2 3 4 5 6 7 8 9 10; do /run/capd-bin publish --pin p$i --fd 3 3</run/f 2>&1 || echo "exit $?"; done`)
		if strings.Count(out, "exit 7") != 1 || !strings.Contains(out, "FileDescriptorStoreMax") {
			t.Fatalf("publishes past FileDescriptorStoreMax - 2: %q", out)
		}
		// At warning priority in the journal (the agent logs natively).
		if !strings.Contains(m.must("journalctl", "-u", "capd", "--no-pager", "-o", "cat", "-p", "warning"), "max_entries does not fit systemd's fd store") {
			t.Error("the agent did not warn, at warning priority, that max_entries does not fit")
		}
		if strings.Contains(m.must("journalctl", "-u", "capd", "--no-pager", "-o", "cat", "-p", "warning"), "agent serving") {
			t.Error("an info line reached warning priority")
		}
		m.killAgent()
		if n := m.entries(); n != 9 {
			t.Fatalf("after kill -9: %d entries, want the 9 acknowledged", n)
		}
		if j := m.must("journalctl", "--no-pager"); strings.Contains(j, "Cannot store more fds") {
			t.Errorf("systemd dropped fds:\n%s", j)
		}
		os.Remove(m.root + "/run/systemd/system/capd.service.d/limit.conf")
		m.write("/etc/capd/capd.toml", "", 0o644)
		m.must("systemctl", "daemon-reload")
		m.must("systemctl", "restart", "capd.service")
	}

	{ // systemctl reload fails when the agent rejects the configuration
		m.write("/etc/capd/capd.toml", "[[grant]]\nconsumer = \"a.service\"\n", 0o644)
		out, err := m.cmd("systemctl", "reload", "capd.service").CombinedOutput()
		if err == nil {
			t.Errorf("systemctl reload with a bad configuration succeeded: %s", out)
		}
		m.write("/etc/capd/capd.toml", "", 0o644)
		m.must("systemctl", "reload", "capd.service")
	}

	{ // STATUS= and the watchdog
		m.write("/run/systemd/system/capd.service.d/watchdog.conf", "[Service]\nWatchdogSec=2\n", 0o644)
		m.must("systemctl", "daemon-reload")
		m.must("systemctl", "restart", "capd.service")
		pid := m.mainPID()
		time.Sleep(5 * time.Second) // past two watchdog intervals
		if m.mainPID() != pid {
			j, _ := m.cmd("journalctl", "-u", "capd", "--no-pager", "-n", "20").CombinedOutput()
			t.Fatalf("the watchdog restarted a healthy agent:\n%s", j)
		}
		want := strconv.Itoa(m.entries()) + " entries, 0 containers"
		if st := strings.TrimSpace(m.must("systemctl", "show", "-p", "StatusText", "--value", "capd.service")); st != want {
			t.Errorf("StatusText %q, want %q", st, want)
		}
		os.Remove(m.root + "/run/systemd/system/capd.service.d/watchdog.conf")
		m.must("systemctl", "daemon-reload")
	}

	{ // crash loop
		before := m.entries()
		// Seven crashes in about three seconds: systemd's default start
		// limit (5 in 10 s) would fail the unit and release the fd store.
		for i := 0; i < 7; i++ {
			pid := m.mainPID()
			if pid == 0 { // between two starts (never "kill -9 0")
				if !m.activating() {
					t.Fatalf("capd.service is neither running nor restarting after %d crashes", i)
				}
				i--
				time.Sleep(50 * time.Millisecond)
				continue
			}
			m.kill9(pid)
			time.Sleep(400 * time.Millisecond)
		}
		for deadline := time.Now().Add(20 * time.Second); !m.active(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				j, _ := m.cmd("journalctl", "-u", "capd", "--no-pager", "-n", "30").CombinedOutput()
				t.Fatalf("capd.service is not active after the crash loop:\n%s", j)
			}
		}
		if n := m.entries(); n != before {
			t.Fatalf("after the crash loop: %d entries, want %d", n, before)
		}
	}

	{ // unconfirmed publish
		// With PID 1 stopped nothing confirms the barrier: the publish must
		// fail rather than be acknowledged.
		m.must("sh", "-c", "echo y > /run/g")
		if err := syscall.Kill(m.pid1, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		out, err := m.cmd("sh", "-c", "/run/capd-bin publish --pin unconfirmed --fd 3 3</run/g").CombinedOutput()
		syscall.Kill(m.pid1, syscall.SIGCONT)
		if err == nil || !strings.Contains(string(out), "systemd did not confirm") {
			t.Fatalf("publish without systemd's confirmation: %v %q", err, out)
		}
		if strings.Contains(m.must("/run/capd-bin", "list"), "unconfirmed") {
			t.Fatal("the unconfirmed entry is listed")
		}
		m.killAgent()
		if strings.Contains(m.must("/run/capd-bin", "list"), "unconfirmed") {
			t.Fatal("the unconfirmed entry came back after a restart")
		}
	}
}

// kill9 sends SIGKILL to pid in the machine. It refuses pid 0 and 1: "kill
// -9 0" would kill the test's own process group.
func (m *machine) kill9(pid int) {
	m.t.Helper()
	if pid <= 1 {
		m.t.Fatalf("refusing to kill -9 %d", pid)
	}
	m.must("kill", "-9", strconv.Itoa(pid))
}

// activating reports whether capd.service is between two starts.
func (m *machine) activating() bool {
	out, _ := m.cmd("systemctl", "is-active", "capd.service").Output()
	s := strings.TrimSpace(string(out))
	return s == "activating" || s == "active" || s == "deactivating"
}

// active reports whether capd.service is active (is-active exits 3 while
// it is activating or failed).
func (m *machine) active() bool {
	out, _ := m.cmd("systemctl", "is-active", "capd.service").Output()
	return strings.TrimSpace(string(out)) == "active"
}
