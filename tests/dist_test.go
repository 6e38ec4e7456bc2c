package tests

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/testutil"
)

// What the project ships, and how it is built: 'make build', 'make
// install', the shipped policy file, man pages and shell completions.
// install_test.go installs the Debian package in a real systemd.

// sudoPath is the PATH sudo gives commands on Debian (secure_path): no
// /usr/local/go/bin.
const sudoPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// distMake runs make TARGET... in the repository with sudo's PATH (and
// GO=... only where Go is not in /usr/local/go, which the Makefile finds by
// itself), and returns its output.
func distMake(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory"}, args...)...)
	cmd.Dir = ".."
	env := []string{"PATH=" + sudoPath}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "PATH" && k != "GO" && k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			env = append(env, kv)
		}
	}
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	if g := strings.TrimSpace(string(goroot)); g != "/usr/local/go" {
		env = append(env, "GO="+filepath.Join(g, "bin", "go"))
	}
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// requireStatic fails unless path is a statically linked ELF executable: no
// program interpreter (PT_INTERP), no dynamic section, no needed library.
// A dynamically linked capd fails in a container without a libc (busybox)
// with "no such file or directory".
func requireStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: dynamically linked (built with cgo?)", path, p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s needs libraries %v (%v)", path, libs, err)
	}
}

// gitHead returns the commit the tree is at, or "" where git does not say.
func gitHead(t *testing.T) string {
	out, err := exec.Command("git", "-C", "..", "rev-parse", "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// 'make build' finds Go without it on PATH (as under sudo), builds a
// static binary even with gcc installed, and stamps the version: capd
// --version names the commit the tree is at.
func TestMakeBuildStatic(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatalf("this test needs gcc, with which a default go build would use cgo (apt-get install gcc; scripts/install-test-deps.sh): %v", err)
	}
	bin := t.TempDir()
	distMake(t, "build", "BIN="+bin)
	for _, b := range []string{"capd", "capd-full", "seed"} {
		requireStatic(t, filepath.Join(bin, b))
	}
	mod, err := exec.Command("go", "version", "-m", filepath.Join(bin, "capd")).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-trimpath=true", "CGO_ENABLED=0"} {
		if !bytes.Contains(mod, []byte(want)) {
			t.Errorf("go version -m: no %s:\n%s", want, mod)
		}
	}
	out, err := exec.Command(filepath.Join(bin, "capd"), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capd --version:\n%s", out)
	same, err := exec.Command(filepath.Join(bin, "capd"), "version").Output()
	if err != nil || !bytes.Equal(same, out) {
		t.Errorf("capd version (%v) says %q, capd --version %q", err, same, out)
	}
	var info cliVersion
	js, err := exec.Command(filepath.Join(bin, "capd"), "version", "--json").Output()
	if err != nil || parseJSONErr(string(js), &info) != nil {
		t.Fatalf("capd version --json: %v %s", err, js)
	}
	if info.Go == "" || info.Platform == "" || !strings.HasPrefix(string(out), "capd "+info.CapdVersion+"\n") {
		t.Errorf("capd version --json %s does not match capd --version", js)
	}
	if head := gitHead(t); head != "" {
		if info.Revision == nil || *info.Revision != head || info.Time == nil || !strings.Contains(info.CapdVersion, head[:12]) && !regexp.MustCompile(`^v\d+\.\d+\.\d+`).MatchString(info.CapdVersion) {
			t.Errorf("built at commit %s, the binary says %s", head, js)
		}
	}
}

// 'make install' honours PREFIX and DESTDIR, points the units and the
// hooks.d file at the installed binary, and leaves an admin's capd.toml
// alone.
func TestMakeInstall(t *testing.T) {
	bin, dest := t.TempDir(), t.TempDir()
	const prefix = "/opt/capdtest"
	distMake(t, "install", "BIN="+bin, "DESTDIR="+dest, "PREFIX="+prefix)
	root := func(p string) string { return filepath.Join(dest, p) }
	exe := prefix + "/bin/capd"
	requireStatic(t, root(exe))
	requireStatic(t, root(prefix+"/bin/capd-full")) // beside capd, which executes it
	for _, u := range []string{"capd.service", "capd.socket"} {
		b, err := os.ReadFile(root(prefix + "/lib/systemd/system/" + u))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "/usr/bin/capd") {
			t.Errorf("%s still names /usr/bin/capd:\n%s", u, b)
		}
		orig, _ := os.ReadFile("../dist/" + u)
		if want := strings.ReplaceAll(string(orig), "/usr/bin/capd", exe); string(b) != want {
			t.Errorf("%s differs from dist/%s beyond the binary's path", u, u)
		}
	}
	unit, _ := os.ReadFile(root(prefix + "/lib/systemd/system/capd.service"))
	if !strings.Contains(string(unit), "ExecStart="+exe+" agent\n") {
		t.Errorf("capd.service does not run %s agent", exe)
	}
	// The hooks.d file is the one 'capd hook install' writes.
	ref := t.TempDir()
	if out, err := exec.Command(capd, "hook", "install", "--dir", ref, "--path", exe).CombinedOutput(); err != nil {
		t.Fatalf("capd hook install: %v %s", err, out)
	}
	want, _ := os.ReadFile(filepath.Join(ref, "capd.json"))
	got, err := os.ReadFile(root(prefix + "/share/containers/oci/hooks.d/capd.json"))
	if err != nil || !bytes.Equal(got, want) || !bytes.Contains(got, []byte(`"`+exe+`"`)) {
		t.Errorf("hooks.d/capd.json (%v):\n%s\nwant:\n%s", err, got, want)
	}
	conf, err := os.ReadFile(root("/etc/capd/capd.toml"))
	shipped, _ := os.ReadFile("../dist/capd.toml")
	if err != nil || !bytes.Equal(conf, shipped) {
		t.Errorf("/etc/capd/capd.toml is not dist/capd.toml (%v)", err)
	}
	for _, p := range []string{"capd.1", "capd-acquire.1", "capd-agent.1", "capd-revoke.1", "capd-hook-install.1", "capd-version.1"} {
		b, err := os.ReadFile(root(prefix + "/share/man/man1/" + p))
		if err != nil || !bytes.HasPrefix(b, []byte(".nh\n.TH ")) || !bytes.Contains(b, []byte(".SH EXIT STATUS")) {
			t.Errorf("man page %s (%v):\n%.300s", p, err, b)
		}
	}
	// The pages say what --help says (the help texts are plain text, not
	// the markdown cobra/doc renders).
	page, _ := os.ReadFile(root(prefix + "/share/man/man1/capd-acquire.1"))
	flat := []byte(strings.Join(strings.Fields(string(page)), " ")) // line breaks follow the help's wrapping
	for _, want := range []string{"LISTEN_FDS=<number of fds>", "sd_listen_fds_with_names()", "LISTEN_* variables", "--private-proc: COMMAND gets"} {
		if !bytes.Contains(flat, []byte(want)) {
			t.Errorf("capd-acquire.1 lacks %q (mangled as markdown?)", want)
		}
	}
	for p, want := range map[string]string{
		"/share/bash-completion/completions/capd":    "__start_capd",
		"/share/zsh/vendor-completions/_capd":        "#compdef capd",
		"/share/fish/vendor_completions.d/capd.fish": "complete -c capd",
	} {
		if b, err := os.ReadFile(root(prefix + p)); err != nil || !bytes.Contains(b, []byte(want)) {
			t.Errorf("%s (%v) lacks %q", p, err, want)
		}
	}
	// Again, over an admin's policy: it stays.
	if err := os.WriteFile(root("/etc/capd/capd.toml"), []byte("# mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	distMake(t, "install", "BIN="+bin, "DESTDIR="+dest, "PREFIX="+prefix)
	if b, _ := os.ReadFile(root("/etc/capd/capd.toml")); string(b) != "# mine\n" {
		t.Errorf("make install overwrote the admin's capd.toml: %q", b)
	}
}

// uncomment turns the settings and examples of the shipped capd.toml on:
// every line that is a commented table header or key = value.
func uncomment(s string) string {
	return regexp.MustCompile(`(?m)^#(\[|[a-z_]+ = )`).ReplaceAllString(s, "$1")
}

// dist/capd.toml, the /etc/capd/capd.toml the package ships, loads with
// the agent's loader and changes nothing; it lists every [agent] key with
// its real default; its examples are valid; and the agent starts with it.
func TestShippedConfig(t *testing.T) {
	const file = "../dist/capd.toml"
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Load(file, false)
	if err != nil {
		t.Fatalf("policy.Load: %v", err)
	}
	if def := policy.Default(); !reflect.DeepEqual(cfg.Agent, def.Agent) || len(cfg.Grants) != 0 || len(cfg.Quotas) != 0 || cfg.Metrics != def.Metrics {
		t.Errorf("as shipped it is not the default: %+v, %+v, %d grants, %d quotas", cfg.Agent, cfg.Metrics, len(cfg.Grants), len(cfg.Quotas))
	}
	keys := reflect.TypeOf(policy.AgentConfig{})
	for i := 0; i < keys.NumField(); i++ {
		key, _, _ := strings.Cut(keys.Field(i).Tag.Get("toml"), ",")
		if !regexp.MustCompile(`(?m)^#` + key + ` = `).Match(text) {
			t.Errorf("agent.%s is not listed (commented out, with its default)", key)
		}
	}

	on := filepath.Join(t.TempDir(), "capd.toml")
	if err := os.WriteFile(on, []byte(uncomment(string(text))), 0o644); err != nil {
		t.Fatal(err)
	}
	all, err := policy.Load(on, false)
	if err != nil {
		t.Fatalf("the shipped settings and examples, uncommented: %v", err)
	}
	if def := policy.Default(); !reflect.DeepEqual(all.Agent, def.Agent) {
		t.Errorf("the commented values are not the defaults:\n got %+v\nwant %+v", all.Agent, def.Agent)
	}
	if len(all.Grants) != 4 || len(all.Quotas) != 2 {
		t.Errorf("uncommented: %d grants, %d quotas; want the 4 and 2 examples", len(all.Grants), len(all.Quotas))
	}
	if all.Metrics.Socket == "" || all.Metrics.Listen == "" || all.Metrics.AllowRemote {
		t.Errorf("uncommented [metrics] = %+v, want the socket and loopback examples", all.Metrics)
	}

	testutil.RequireRoot(t)
	// The uncommented [metrics] example, on a socket and a port of the
	// test's own.
	hermetic := strings.NewReplacer(`"/run/capd/metrics.sock"`, strconv.Quote(filepath.Join(t.TempDir(), "metrics.sock")),
		`"127.0.0.1:9417"`, `"127.0.0.1:0"`).Replace(uncomment(string(text)))
	if hermetic == uncomment(string(text)) {
		t.Error("the [metrics] example is not the one this test expects")
	}
	for _, c := range []string{string(text), hermetic} {
		a := testutil.StartAgent(t, capd, c)
		a.WaitLog(t, "agent serving", 0)
		if c == hermetic {
			a.WaitLog(t, "metrics endpoint listening", 0)
		}
		a.Stop()
	}
}

// The shell completions offer what the agent lists: OWNER:NAME for
// acquire, the caller's own names (or --owner's) for revoke, owners for
// --owner; nothing, quickly and without an error, when the agent is
// unreachable or does not answer.
func TestCompletion(t *testing.T) {
	testutil.RequireRoot(t)
	a := testutil.StartAgent(t, capd, "[[grant]]\nconsumer = \"zincati.service\"\nacquire = [\"rpm-ostreed.service:zincati-fd\"]\n")
	pub := testutil.NewCgroup(t, "rpm-ostreed.service")
	f, err := os.CreateTemp(t.TempDir(), "entry")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, name := range []string{"zincati-fd", "foo-op-fd"} {
		cmd := pub.Command(capd, "publish", "--pin", name, "--fd", "3")
		cmd.Env, cmd.ExtraFiles = a.Env(), []*os.File{f}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("publish %s: %v %s", name, err, out)
		}
	}
	// complete runs capd __complete ARGS in cg (nil: the test's own cgroup)
	// as root, or as nobody where cg is zincati.
	zincati := testutil.NewCgroup(t, "zincati.service")
	complete := func(cg *testutil.Cgroup, env []string, args ...string) (lines []string, took time.Duration) {
		t.Helper()
		var cmd *exec.Cmd
		if cg != nil {
			cmd = cg.Command(capd, append([]string{"__complete"}, args...)...)
			if cg == zincati {
				cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
			}
		} else {
			cmd = exec.Command(capd, append([]string{"__complete"}, args...)...)
		}
		cmd.Env = env
		start := time.Now()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("capd __complete %q: %v %s", args, err, out)
		}
		return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n"), time.Since(start)
	}
	check := func(what string, got []string, want ...string) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: completions %q, want %q", what, got, want)
		}
	}
	got, _ := complete(nil, a.Env(), "acquire", "")
	check("acquire ''", got, "rpm-ostreed.service:foo-op-fd\tfile, pinned", "rpm-ostreed.service:zincati-fd\tfile, pinned", ":4")
	got, _ = complete(nil, a.Env(), "acquire", "rpm-ostreed.service:z")
	check("acquire rpm-ostreed.service:z", got, "rpm-ostreed.service:zincati-fd\tfile, pinned", ":4")
	got, _ = complete(nil, a.Env(), "acquire", "rpm-ostreed.service:zincati-fd", "")
	check("acquire, one given", got, "rpm-ostreed.service:foo-op-fd\tfile, pinned", ":4")
	got, _ = complete(nil, a.Env(), "acquire", "rpm-ostreed.service:zincati-fd", "--", "")
	check("acquire's COMMAND", got, ":0")
	// zincati.service (not a host administrator) sees what it is granted.
	got, _ = complete(zincati, a.Env(), "acquire", "")
	check("acquire '' as zincati.service", got, "rpm-ostreed.service:zincati-fd\tfile, pinned", ":4")
	got, _ = complete(pub, a.Env(), "revoke", "")
	check("revoke '' as the owner", got, "foo-op-fd\tfile, pinned", "zincati-fd\tfile, pinned", ":4")
	got, _ = complete(nil, a.Env(), "revoke", "")
	check("revoke '' as root (owns nothing)", got, ":4")
	got, _ = complete(nil, a.Env(), "revoke", "--owner", "rpm-ostreed.service", "z")
	check("revoke --owner rpm-ostreed.service z", got, "zincati-fd\tfile, pinned", ":4")
	got, _ = complete(nil, a.Env(), "revoke", "--owner", "")
	check("revoke --owner ''", got, "rpm-ostreed.service", ":4")

	// No agent: no completion, no error.
	dir := t.TempDir()
	gone := append(os.Environ(), "CAPD_SOCKET="+filepath.Join(dir, "none"))
	got, _ = complete(nil, gone, "acquire", "")
	check("acquire '' without an agent", got, ":4")
	got, _ = complete(nil, gone, "revoke", "--owner", "")
	check("revoke --owner '' without an agent", got, ":4")
	// An agent that never answers: none either, within the timeout.
	stalled := filepath.Join(dir, "stalled")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: stalled}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		t.Fatal(err)
	}
	got, took := complete(nil, append(os.Environ(), "CAPD_SOCKET="+stalled), "acquire", "")
	check("acquire '' with a stalled agent", got, ":4")
	if took > 3*time.Second {
		t.Errorf("completion with a stalled agent took %v", took)
	}
}

// The bash completion script, as bash runs it on TAB (bash-completion
// splits words at ':'): OWNER:NAME completes after the colon.
func TestBashCompletion(t *testing.T) {
	testutil.RequireRoot(t)
	const lib = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(lib); err != nil {
		t.Fatalf("this test needs bash-completion (apt-get install bash-completion; scripts/install-test-deps.sh): %v", err)
	}
	a := testutil.StartAgent(t, capd, "")
	pub := testutil.NewCgroup(t, "rpm-ostreed.service")
	cmd := pub.Command(capd, "publish", "--pin", "zincati-fd", "--fd", "0")
	cmd.Env = a.Env()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("publish: %v %s", err, out)
	}
	script := filepath.Join(t.TempDir(), "capd.bash")
	out, err := exec.Command(capd, "completion", "bash").Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, out, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ line, want string }{
		{"capd acq", "acquire"},
		{"capd acquire rpm", "rpm-ostreed.service:zincati-fd"},
		{"capd acquire rpm-ostreed.service:z", "zincati-fd"}, // the word after ':'
		{"capd revoke --owner rpm", "rpm-ostreed.service"},
	} {
		sh := fmt.Sprintf(`source %s; source %s
COMP_LINE=%q; COMP_POINT=${#COMP_LINE}
COMP_WORDBREAKS=$' \t\n"'"'"'><=;|&(:'
read -ra COMP_WORDS <<<"$(sed 's/:/ : /g' <<<"$COMP_LINE")"
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
__start_capd capd "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%%s\n' "${COMPREPLY[@]}"`, lib, script, tc.line)
		bash := exec.Command("bash", "-c", sh)
		bash.Env = append(a.Env(), "PATH="+filepath.Dir(capd)+":"+os.Getenv("PATH"))
		out, err := bash.Output() // stderr: compopt complains outside a real completion
		if err != nil || strings.TrimSpace(string(out)) != tc.want {
			t.Errorf("bash completion of %q: %v %q, want %q", tc.line, err, out, tc.want)
		}
	}
}
