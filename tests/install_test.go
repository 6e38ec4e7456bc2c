package tests

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

// maxExposure is the most that systemd-analyze security may score the
// shipped capd.service (0 best, 10 worst; 1.0 to 4.9 is "OK"). It scored
// 9.6 UNSAFE unsandboxed; README, Install, states the measured figure.
const maxExposure = 2.5

// bootPackageMachine boots this host's OS in systemd-nspawn as
// bootMachine does (a tmpfs root with the host's /usr), but with nothing of
// capd installed, and with the host's /usr, /etc and /var writable
// (overlays, the changes in a temporary directory), so that dpkg finds its
// database, the users and groups it names, and can install and remove
// packages.
func bootPackageMachine(t *testing.T) *machine {
	t.Helper()
	upper := t.TempDir()
	return startMachine(t, "--volatile=yes",
		"--overlay=/usr:"+upper+"/usr:/usr", "--overlay=/etc:"+upper+"/etc:/etc", "--overlay=/var:"+upper+"/var:/var",
		"-D", "/", "--register=no", "--keep-unit", "-M", fmt.Sprintf("capdpkg%d", os.Getpid()))
}

// capdIn runs capd ARGS in the machine, bounded: the client of an agent
// that never comes up would wait forever (socket activation queues its
// connection).
func (m *machine) capdIn(args ...string) string {
	m.t.Helper()
	return m.must(append([]string{"timeout", "20", "capd"}, args...)...)
}

// state is systemctl's word for a unit (is-enabled, is-active), whatever
// its exit code.
func (m *machine) state(verb, unit string) string {
	out, _ := m.cmd("systemctl", verb, unit).Output()
	return strings.TrimSpace(string(out))
}

// The Debian package, end to end in a real systemd: 'make deb' builds it;
// dpkg -i enables and starts capd.socket; the agent, started by its first
// client, runs sandboxed (the exposure systemd-analyze security measures
// stays at most maxExposure) and serves the seed pair as units, a consumer
// of another uid among them, and audit; reinstalling (an upgrade) restarts
// the agent and keeps its entries and its socket; dpkg -r stops it and
// removes the units; a purge removes /etc/capd and the enablement.
func TestDebianPackage(t *testing.T) {
	testutil.RequireRoot(t)
	bin := t.TempDir()
	distMake(t, "deb", "BIN="+bin)
	debs, _ := filepath.Glob(filepath.Join(bin, "capd_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v", debs)
	}
	deb := debs[0]
	arch, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		t.Fatal(err)
	}
	info := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("dpkg-deb", append(args, deb)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg-deb %v: %v %s", args, err, out)
		}
		return string(out)
	}
	fields := info("--show", "--showformat", "${Package} ${Version} ${Architecture}\n")
	t.Logf("%s: %s", filepath.Base(deb), fields)
	if f := strings.Fields(fields); len(f) != 3 || f[0] != "capd" || f[2] != strings.TrimSpace(string(arch)) ||
		!regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`).MatchString(f[1]) || filepath.Base(deb) != "capd_"+f[1]+"_"+f[2]+".deb" {
		t.Errorf("package fields %q", fields)
	}
	if c := info("--info"); !strings.Contains(c, "conffiles") || !strings.Contains(c, "postinst") || !strings.Contains(c, "prerm") || !strings.Contains(c, "postrm") {
		t.Errorf("control archive:\n%s", c)
	}
	if c := info("--ctrl-tarfile"); c == "" {
		t.Error("no control tarfile")
	}
	contents := info("--contents")
	for _, p := range []string{"./usr/bin/capd", "./usr/bin/capd-nri", "./usr/lib/systemd/system/capd.service", "./usr/lib/systemd/system/capd.socket",
		"./usr/share/containers/oci/hooks.d/capd.json", "./etc/capd/capd.toml", "./usr/share/man/man1/capd-acquire.1.gz",
		"./usr/share/bash-completion/completions/capd", "./usr/share/zsh/vendor-completions/_capd",
		"./usr/share/fish/vendor_completions.d/capd.fish", "./usr/share/doc/capd/copyright"} {
		if !regexp.MustCompile(`(?m) root/root .* ` + regexp.QuoteMeta(p) + `$`).MatchString(contents) {
			t.Errorf("the package lacks %s (owned by root):\n%s", p, contents)
		}
	}

	m := bootPackageMachine(t)
	b, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	m.write("/run/capd.deb", string(b), 0o644)
	// This host's policy-rc.d (a container image's) forbids starting
	// services from maintainer scripts; a Debian host has none.
	os.Remove(m.root + "/usr/sbin/policy-rc.d")
	t.Logf("dpkg -i: %s", m.must("dpkg", "-i", "/run/capd.deb"))
	if e, a := m.state("is-enabled", "capd.socket"), m.state("is-active", "capd.socket"); e != "enabled" || a != "active" {
		j, _ := m.cmd("journalctl", "--no-pager", "-n", "30").CombinedOutput()
		t.Fatalf("after dpkg -i capd.socket is %s and %s\n%s", e, a, j)
	}
	if a := m.state("is-active", "capd.service"); a != "inactive" {
		t.Errorf("capd.service is %s before any client connected (socket activation)", a)
	}
	if v := m.capdIn("--version"); !strings.HasPrefix(v, "capd v") && !strings.HasPrefix(v, "capd (devel)") {
		t.Errorf("capd --version: %q", v)
	}
	requireStatic(t, m.root+"/usr/bin/capd")
	if out := m.must("man", "-w", "capd-acquire"); !strings.Contains(out, "/usr/share/man/man1/capd-acquire.1.gz") {
		t.Errorf("man -w capd-acquire: %q", out)
	}

	// The sandbox.
	sec, _ := m.cmd("systemd-analyze", "security", "--no-pager", "capd.service").CombinedOutput()
	score := regexp.MustCompile(`Overall exposure level for capd\.service: ([0-9.]+) (\w+)`).FindStringSubmatch(string(sec))
	if score == nil {
		t.Fatalf("systemd-analyze security capd.service:\n%s", sec)
	}
	t.Logf("systemd-analyze security capd.service: %s %s (at most %.1f)", score[1], score[2], maxExposure)
	if n, err := strconv.ParseFloat(score[1], 64); err != nil || n > maxExposure {
		t.Errorf("capd.service exposure %s %s, more than %.1f:\n%s", score[1], score[2], maxExposure, sec)
	}

	// The seed pair against the packaged agent as plain units, policy in a
	// drop-in: rpm-ostreed publishes the socket its .socket unit holds
	// (capd publish --listen-fds, chain-loading its program); zincati,
	// started first, waits for the entry (capd acquire --wait) and serves
	// on the socket it got. The consumer runs as nobody (the agent then
	// needs CAP_KILL to check that its peer lives, CAP_SYS_PTRACE and
	// CAP_DAC_READ_SEARCH to audit it).
	m.write("/etc/capd/conf.d/seed.toml", "[[grant]]\nconsumer = \"zincati.service\"\nacquire = [\"rpm-ostreed.service:zincati-fd\"]\n", 0o644)
	m.write("/run/systemd/system/rpm-ostreed.socket", `[Socket]
ListenStream=/run/zincati.sock
FileDescriptorName=zincati-fd
`, 0o644)
	m.write("/run/systemd/system/rpm-ostreed.service", `[Service]
ExecStart=/usr/bin/capd publish --listen-fds -- sleep infinity
`, 0o644)
	m.write("/run/systemd/system/zincati.service", `[Service]
User=nobody
StandardOutput=truncate:/run/zincati.out
ExecStart=/usr/bin/capd acquire --wait=30s rpm-ostreed.service:zincati-fd -- /bin/sh -c 'echo "$LISTEN_FDS $LISTEN_FDNAMES"; exec perl -MSocket -e "open(L, q(<&=3)) or die; accept(C, L) or die qq(accept: \$!); syswrite(C, qq(from-zincati\\n)); close(C); sleep while 1"'
`, 0o644)
	m.must("systemctl", "daemon-reload")
	m.must("systemctl", "start", "zincati.service") // before its publisher: it waits
	m.must("systemctl", "start", "rpm-ostreed.socket", "rpm-ostreed.service")
	got := m.must("timeout", "20", "perl", "-MSocket", "-e",
		`socket(S, AF_UNIX, SOCK_STREAM, 0) or die; connect(S, pack_sockaddr_un("/run/zincati.sock")) or die "connect: $!"; print <S>`)
	out, _ := os.ReadFile(m.root + "/run/zincati.out")
	if got != "from-zincati\n" || string(out) != "1 zincati-fd\n" {
		j, _ := m.cmd("journalctl", "--no-pager", "-n", "30").CombinedOutput()
		t.Fatalf("a client of zincati.service got %q; zincati.service printed %q\n%s", got, out, j)
	}
	pid := m.mainPID()
	requireSandboxed(t, m, pid)

	// audit sees every holder, the one of another uid too
	var report cliAudit
	parseJSON(t, m.capdIn("audit", "--json"), &report)
	holders := map[string]int{}
	for _, e := range report.Entries {
		if e.Owner == "rpm-ostreed.service" && e.Name == "zincati-fd" {
			for _, h := range e.Holders {
				id, uid := "(unknown)", -1
				if h.Identity != nil {
					id = *h.Identity
				}
				if h.UID != nil {
					uid = *h.UID
				}
				holders[id] = uid
			}
		}
	}
	// (and init.scope: systemd's fd store holds a copy of every entry)
	if want := map[string]int{"zincati.service": 65534, "rpm-ostreed.service": 0, "init.scope": 0}; !maps.Equal(holders, want) {
		t.Errorf("audit: holders of zincati-fd %v, want rpm-ostreed.service, zincati.service (uid 65534) and init.scope", holders)
	}
	if out := m.must("timeout", "30", "systemctl", "reload", "capd.service"); out != "" {
		t.Logf("systemctl reload: %s", out)
	}
	m.capdIn("status")

	// Reinstalling is an upgrade: the agent restarts into the (new) binary
	// and keeps its entries, the socket stays the one containers bind in.
	m.unit("keeper", "sh", "-c", `echo kept > /run/kept && exec 3</run/kept && exec timeout 20 capd publish --pin kept --fd 3`)
	var before unix.Stat_t
	if err := unix.Stat(m.root+"/run/capd/capd.sock", &before); err != nil {
		t.Fatal(err)
	}
	m.must("timeout", "60", "dpkg", "-i", "/run/capd.deb")
	for deadline := time.Now().Add(20 * time.Second); m.mainPID() == pid || !m.active(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the upgrade did not restart the agent (main pid %d, was %d)", m.mainPID(), pid)
		}
	}
	if got := m.unit("keeper", "timeout", "20", "capd", "acquire", "keeper.service:kept", "--", "cat", "/proc/self/fd/3"); got != "kept\n" {
		t.Errorf("after the upgrade: %q", got)
	}
	var after unix.Stat_t
	if err := unix.Stat(m.root+"/run/capd/capd.sock", &after); err != nil || after.Ino != before.Ino {
		t.Errorf("the upgrade replaced the socket (inode %d, was %d: %v)", after.Ino, before.Ino, err)
	}

	// Removal stops and forgets the units; the policy stays until purge.
	m.must("dpkg", "-r", "capd")
	for _, u := range []string{"capd.socket", "capd.service"} {
		if a, e := m.state("is-active", u), m.state("is-enabled", u); a == "active" || e == "enabled" {
			t.Errorf("after dpkg -r %s is %s and %s", u, a, e)
		}
	}
	if _, err := os.Stat(m.root + "/usr/bin/capd"); err == nil {
		t.Error("dpkg -r left /usr/bin/capd")
	}
	if testutil.Connectable(m.root + "/run/capd/capd.sock") {
		t.Error("something still answers on /run/capd/capd.sock after dpkg -r")
	}
	if _, err := os.Stat(m.root + "/etc/capd/capd.toml"); err != nil {
		t.Errorf("dpkg -r removed the conffile: %v", err)
	}
	m.must("dpkg", "--purge", "capd")
	for _, p := range []string{"/etc/capd", "/etc/systemd/system/sockets.target.wants/capd.socket"} {
		if _, err := os.Lstat(m.root + p); err == nil {
			t.Errorf("dpkg --purge left %s", p)
		}
	}
}

// requireSandboxed checks that the agent (pid, in the machine) runs under
// capd.service's sandbox rather than a setting systemd skipped: its
// capability bounding set, no new privileges, a seccomp filter, and
// namespaces of its own (mount, network, UTS).
func requireSandboxed(t *testing.T, m *machine, pid int) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("%s/proc/%d/status", m.root, pid))
	if err != nil {
		t.Fatal(err)
	}
	const caps = 1<<unix.CAP_SYS_ADMIN | 1<<unix.CAP_SYS_PTRACE | 1<<unix.CAP_DAC_READ_SEARCH | 1<<unix.CAP_KILL
	for _, want := range []string{fmt.Sprintf("CapBnd:\t%016x\n", caps), fmt.Sprintf("CapEff:\t%016x\n", caps), "NoNewPrivs:\t1\n", "Seccomp:\t2\n"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("the agent's status lacks %q:\n%s", want, status)
		}
	}
	for _, ns := range []string{"mnt", "net", "uts"} {
		agent, err1 := os.Readlink(fmt.Sprintf("%s/proc/%d/ns/%s", m.root, pid, ns))
		init, err2 := os.Readlink(fmt.Sprintf("%s/proc/%d/ns/%s", m.root, 1, ns))
		if err1 != nil || err2 != nil || agent == init {
			t.Errorf("the agent shares PID 1's %s namespace (%s, %v %v)", ns, agent, err1, err2)
		}
	}
}
