package tests

import (
	"os"
	"strings"
	"testing"
	"time"
)

// Under a real systemd with systemd-machined: a machine machined registers
// is machine:NAME (unescaped; its scope is an alias) for its processes, and
// policy grants it by that name. The machine is registered the way
// systemd-nspawn registers one (CreateMachine, which moves its leader into
// machine-NAME.scope); its leader then runs capd.
func TestMachineIdentity(t *testing.T) {
	m := bootMachine(t)
	m.write("/etc/capd/capd.toml", "[[grant]]\nconsumer = \"machine:web-*\"\nacquire = [\"pub.service:for-machines\"]\n", 0o644)
	m.must("systemctl", "reload", "capd.service")
	m.must("systemd-run", "--unit", "pub", "sh", "-c", `echo machine-data > /run/md && exec /run/capd-bin publish --pin for-machines < /run/md`)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(m.must("/run/capd-bin", "list"), "for-machines"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pub.service did not publish")
		}
	}
	// The leader waits until machined has moved it into the machine's
	// scope, then asks capd who it is and acquires.
	m.must("systemd-run", "--unit", "leader", "sh", "-c", `
while ! grep -q 'machine-' /proc/self/cgroup; do sleep 0.05; done
/run/capd-bin whoami > /run/who.out 2>&1
/run/capd-bin acquire pub.service:for-machines -- cat /proc/self/fd/3 > /run/acq.out 2>&1
/run/capd-bin status > /run/status.out 2>&1; echo "status=$?" >> /run/status.out
exec sleep 1000`)
	var pid string
	for deadline := time.Now().Add(10 * time.Second); pid == "" || pid == "0"; time.Sleep(50 * time.Millisecond) {
		pid = strings.TrimSpace(m.must("systemctl", "show", "-p", "MainPID", "--value", "leader.service"))
		if time.Now().After(deadline) {
			t.Fatal("leader.service has no main process")
		}
	}
	m.must("busctl", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager",
		"CreateMachine", "sayssusa(sv)", "web-1", "0", "capd-test", "container", pid, "/", "0")
	var who []byte
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		who, _ = os.ReadFile(m.root + "/run/status.out")
		if strings.Contains(string(who), "status=") || time.Now().After(deadline) { // the leader's last line
			break
		}
	}
	who, _ = os.ReadFile(m.root + "/run/who.out")
	if !strings.Contains(string(who), "machine:web-1") {
		t.Fatalf("whoami in the machine: %q\n%s", who, m.must("machinectl", "list"))
	}
	if acq, _ := os.ReadFile(m.root + "/run/acq.out"); string(acq) != "machine-data\n" {
		t.Errorf("acquire in the machine: %q", acq)
	}
	// A machine is a container: root in it is no host administrator.
	if st, _ := os.ReadFile(m.root + "/run/status.out"); !strings.Contains(string(st), "status=4") || !strings.Contains(string(st), "machine:web-1") {
		t.Errorf("status in the machine: %s", st)
	}
}

// A service hands its fds to a systemd-nspawn container it starts: capd
// acquire ... -- systemd-nspawn. nspawn passes socket-activated fds to its
// payload (at 3, LISTEN_FDS, LISTEN_PID=1) but drops LISTEN_FDNAMES
// (systemd 252); --setenv=LISTEN_FDNAMES=... gives the names back.
func TestNspawnDelivery(t *testing.T) {
	e := newCtrEnv(t, `
[[grant]]
consumer = "db.service"
acquire  = ["rpm-ostreed.service:zincati-fd"]
`)
	root := newRootfs(t)
	os.MkdirAll(root+"/usr", 0o755) // nspawn wants an OS tree
	os.WriteFile(root+"/etc/os-release", []byte("ID=capdtest\n"), 0o644)
	r := e.mustRun("db.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--",
		"systemd-nspawn", "--quiet", "--console=pipe", "--register=no", "--keep-unit", "--setenv=LISTEN_FDNAMES=zincati-fd", "-D", root,
		"/bin/sh", "-c", `echo "$LISTEN_FDS $LISTEN_FDNAMES $LISTEN_PID"; cat <&3; echo`)
	if r.stdout != "1 zincati-fd 1\nsecret\n" {
		t.Fatalf("the nspawn payload saw %q\nstderr: %s", r.stdout, r.stderr)
	}
}

// A real systemd-nspawn container that registers with machined, with the
// agent's socket bound into it read-only (--bind-ro=/run/capd): its
// processes are machine:NAME, acquire what policy grants that name, and
// root in it is no host administrator.
func TestNspawnMachineAcquires(t *testing.T) {
	m := bootMachine(t)
	m.write("/etc/capd/capd.toml", "[[grant]]\nconsumer = \"machine:inner\"\nacquire = [\"pub.service:for-inner\"]\n", 0o644)
	m.must("systemctl", "reload", "capd.service")
	m.must("systemd-run", "--unit", "pub", "sh", "-c", `echo inner-data > /run/md && exec /run/capd-bin publish --pin for-inner < /run/md`)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(m.must("/run/capd-bin", "list"), "for-inner"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pub.service did not publish")
		}
	}
	out := m.must("systemd-nspawn", "--quiet", "--console=pipe", "-M", "inner", "--volatile=yes", "-D", "/",
		"--bind-ro=/run/capd", "--bind-ro=/run/capd-bin", "--bind-ro=/run/capd-full", "--",
		"/bin/sh", "-c", `/run/capd-bin whoami; /run/capd-bin acquire pub.service:for-inner -- cat /proc/self/fd/3; /run/capd-bin status; echo "status=$?"`)
	t.Logf("in the nspawn machine:\n%s", out)
	for _, want := range []string{"machine:inner", "inner-data\n", "status=4"} {
		if !strings.Contains(out, want) {
			t.Errorf("in the nspawn machine: want %q in\n%s", want, out)
		}
	}
}
