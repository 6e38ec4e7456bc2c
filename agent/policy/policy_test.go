package policy

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadAndAllowed(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "capd.toml", `
[agent]
idle_timeout = "5s"

[[grant]]
consumer = "zincati.service"
acquire  = ["rpm-ostreed.service:zincati-fd", "rpm-ostreed.service:foo-op-fd"]

[[grant]]
consumer = "container:web-*"
acquire  = ["cgroup:/machine/db:sock-*"]
`)
	write(t, dir, "conf.d/10-extra.toml", `
[agent]
max_entries = 10
[[grant]]
consumer = "cgroup:/machine.slice/*"
acquire = ["*.service:shared"]
`)
	c, err := Load(f, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := time.Duration(c.Agent.IdleTimeout); got != 5*time.Second {
		t.Errorf("idle_timeout = %v", got)
	}
	if c.Agent.MaxEntries != 10 || c.Agent.MaxConnections != DefaultMaxConnections {
		t.Errorf("agent settings = %+v", c.Agent)
	}
	if len(c.Files) != 2 {
		t.Errorf("files = %v", c.Files)
	}
	for _, tc := range []struct {
		consumer, owner, name string
		want                  bool
	}{
		{"zincati.service", "rpm-ostreed.service", "zincati-fd", true},
		{"zincati.service", "rpm-ostreed.service", "foo-op-fd", true},
		{"zincati.service", "rpm-ostreed.service", "other", false},
		{"zincati.service", "evil.service", "zincati-fd", false},
		{"other.service", "rpm-ostreed.service", "zincati-fd", false},
		{"cgroup:/", "rpm-ostreed.service", "zincati-fd", false},
		{"container:web-1", "cgroup:/machine/db", "sock-a", true},
		{"container:db", "cgroup:/machine/db", "sock-a", false},
		{"cgroup:/machine.slice/x", "a.service", "shared", true},
		{"cgroup:/machine.slice/x/y", "a.service", "shared", false},
	} {
		if got := allowed(c, tc.consumer, tc.owner, tc.name); got != tc.want {
			t.Errorf("Allowed(%q, %q:%q) = %v, want %v", tc.consumer, tc.owner, tc.name, got, tc.want)
		}
	}
}

func TestDefaultDenies(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "absent.toml"), true)
	if err != nil {
		t.Fatal(err)
	}
	if allowed(c, "cgroup:/", "a.service", "x") {
		t.Fatal("empty policy allowed something")
	}
	if _, err := Load(filepath.Join(t.TempDir(), "absent.toml"), false); err == nil {
		t.Fatal("missing explicit config loaded")
	}
}

func TestBadConfigNamesFileLineKey(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[[grant]]\nconsumer = \"a.service\"\nacquire = [\"nocolon\"]\n", `line 3 (last key "grant.acquire")`},
		{"[[grant]]\nconsumer = \"[bad\"\nacquire = [\"a.service:x\"]\n", `line 2 (last key "grant.consumer")`},
		{"[[grant]]\nconsumer = \"[!a]*.service\"\nacquire = [\"a.service:x\"]\n", `[^...]`},
		{"[[grant]]\nconsumer = \"a.service\"\nacquire = [\"a.service:[!x]\"]\n", `[^...]`},
		{"[[grant]]\nconsumer = \"a.service\"\nacquire = [\"a.service:bad/name\"]\n", `line 3`},
		{"[[grant]]\nconsumer = \"a.service\"\nacqiure = [\"a.service:x\"]\n", `capd.toml:3:1: unknown key "grant.acqiure"`},
		{"[[grant]]\nconsumer = \"a.service\"\n", `missing or empty key "acquire"`},
		{"[[grant]]\nacquire = [\"a.service:x\"]\n", `missing key "consumer"`},
		{"[agent]\nidle_timeout = \"-3s\"\n", `line 2 (last key "agent.idle_timeout")`},
		{"[agent]\nmax_entries = -1\n", `capd.toml:2:1: agent.max_entries must be positive`},
		{"[[grant]\n", `toml: line`},
	} {
		dir := t.TempDir()
		f := write(t, dir, "capd.toml", tc.body)
		_, err := Load(f, false)
		if err == nil {
			t.Errorf("config %q loaded, want error containing %q", tc.body, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), f) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %q, want file name and %q", tc.body, err, tc.want)
		}
	}
}

func TestQuotas(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "capd.toml", `
[agent]
default_max_entries = 10
default_max_pinned = 3

[[quota]]
cgroup = "/system.slice"
max_pinned = 1024
max_entries = 4096

[[quota]]
unit = "rpm-ostreed.service"
max_pinned = 16

[[quota]]
cgroup = "/system.slice/rpm-ostreed.service"
max_pinned = 20
max_entries = 30
`)
	c, err := Load(f, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path               string
		owner              bool
		entries, pinned    int
		entriesSrc, pinSrc string
	}{
		{"/system.slice", false, 4096, 1024, "quota cgroup=/system.slice", "quota cgroup=/system.slice"},
		{"/system.slice", true, 4096, 1024, "quota cgroup=/system.slice", "quota cgroup=/system.slice"},
		// Path and unit quotas combine, the tightest winning per limit.
		{"/system.slice/rpm-ostreed.service", true, 30, 16, "quota cgroup=/system.slice/rpm-ostreed.service", "quota unit=rpm-ostreed.service"},
		{"/other.slice/rpm-ostreed.service", true, Unlimited, 16, "", "quota unit=rpm-ostreed.service"},
		// Owner cgroups without a quota get the defaults; others nothing.
		{"/system.slice/zincati.service", true, 10, 3, "default_max_entries", "default_max_pinned"},
		{"/system.slice/zincati.service", false, Unlimited, Unlimited, "", ""},
		// The root's limit is the agent's max_entries, applied elsewhere.
		{"/", true, Unlimited, Unlimited, "", ""},
	} {
		l := c.NodeLimits(tc.path, tc.owner)
		if l.MaxEntries != tc.entries || l.MaxPinned != tc.pinned || l.EntriesSource != tc.entriesSrc || l.PinnedSource != tc.pinSrc {
			t.Errorf("NodeLimits(%q, %v) = %+v, want %d (%s) / %d (%s)", tc.path, tc.owner, l, tc.entries, tc.entriesSrc, tc.pinned, tc.pinSrc)
		}
	}
	if d := Default(); d.NodeLimits("/a.service", true).MaxEntries != DefaultCgroupMaxEntries {
		t.Errorf("default config: %+v", d.NodeLimits("/a.service", true))
	}
}

func TestBadQuotas(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[[quota]]\nmax_pinned = 1\n", `quota #1: missing key "cgroup" or "unit"`},
		{"[[quota]]\ncgroup = \"/a\"\nunit = \"a.service\"\nmax_pinned = 1\n", "not both"},
		{"[[quota]]\ncgroup = \"/a\"\n", "set max_entries, max_pinned or both"},
		{"[[quota]]\ncgroup = \"a/b\"\nmax_pinned = 1\n", "clean absolute"},
		{"[[quota]]\ncgroup = \"/a/../b\"\nmax_pinned = 1\n", "clean absolute"},
		{"[[quota]]\nunit = \"a.socket\"\nmax_pinned = 1\n", "not a .service, .scope or .slice"},
		{"[[quota]]\nunit = \"a.service\"\nmax_entries = -1\n", "0 or more"},
		{"[[quota]]\nunit = \"a.service\"\nmax_pinned = 1\n[[quota]]\nunit = \"a.service\"\nmax_entries = 1\n", "quota #2: unit=a.service has a quota already"},
		{"[[quota]]\nunit = \"a.service\"\nmax_pined = 1\n", `unknown key "quota.max_pined"`},
		{"[agent]\ndefault_max_pinned = 0\n", "agent.default_max_pinned must be positive"},
	} {
		f := write(t, t.TempDir(), "capd.toml", tc.body)
		_, err := Load(f, false)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), f) {
			t.Errorf("config %q: error %v, want it to name the file and say %q", tc.body, err, tc.want)
		}
	}
}

// A FIFO, a device or an oversized file in conf.d is refused at once:
// reading it would block the reload or never end.
func TestLoadRefusesNonRegularFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(p string) error
		want string
	}{
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o644) }, "not a regular file"},
		{"dev-zero", func(p string) error { return os.Symlink("/dev/zero", p) }, "not a regular file"},
		{"dir", func(p string) error { return os.Mkdir(p, 0o755) }, "not a regular file"},
		{"huge", func(p string) error { return os.WriteFile(p, make([]byte, MaxFileSize+1), 0o644) }, "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			f := write(t, dir, "capd.toml", "")
			os.Mkdir(filepath.Join(dir, "conf.d"), 0o755)
			if err := tc.make(filepath.Join(dir, "conf.d", "zz.toml")); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { _, err := Load(f, false); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Load: %v, want an error with %q", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Load blocks on conf.d/zz.toml")
			}
		})
	}
}

// Every error names file, line and column, also where a key repeats across
// the elements of an array of tables; patterns that can never match are
// warned about with their position.
func TestPositionsAndWarnings(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[[grant]]\nconsumer = \"a.service\"\nacquire = [\"b.service:x\"]\n\n[[grant]]\nconsumer = \"c.service\"\n", `capd.toml:5:1: grant #2 (consumer "c.service"): missing or empty key "acquire"`},
		{"[[grant]]\nconsumer = \"a.service\"\nacquire = [\"b.service:x\"]\n[[grant]]\n  acquire = [\"b.service:x\"]\n", `capd.toml:4:1: grant #2: missing key "consumer"`},
		{"[agent]\nmax_entries = 5\n[[quota]]\ncgroup = \"relative\"\nmax_pinned = 1\n", `capd.toml:3:1: quota #1`},
		{"[agent]\n\n  max_connections = 0\n", `capd.toml:3:3: agent.max_connections must be positive`},
		{"[[grant]]\nconsumer = \"a.service\"\nacquire = [\"b.service:x\"]\nallow_kinds = [\"fifo\"]\n", `capd.toml:4:1: grant #1`},
		{"[agent]\nmax_entries = \"x\"\n", `capd.toml:2:`},
	} {
		_, err := Load(write(t, t.TempDir(), "capd.toml", tc.body), false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want %q", tc.body, err, tc.want)
		}
	}
	c := mustParse(t, `
[[grant]]
consumer = "zincati.service"
acquire  = ["rpm-ostreed:zincati-fd", "rpm-ostreed.service:ok"]

[[grant]]
consumer = "zincati"
acquire  = ["container:*:x", "cgroup:machine.slice/x:y", "box:web:z", "*.slice:q"]

[[grant]]
consumer = "web-*"
acquire  = ["*:x"]
`)
	got := strings.Join(c.Warnings, "\n")
	for _, want := range []string{
		`capd.toml:4:1: grant #1: entry "rpm-ostreed:zincati-fd" can never match`, `did you mean "rpm-ostreed.service"`,
		`capd.toml:7:1: grant #2: consumer "zincati" can never match`,
		`entry "cgroup:machine.slice/x:y" can never match`, `lacks the leading /`,
		`entry "box:web:z" can never match`, `entry "*.slice:q" can never match`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings lack %q:\n%s", want, got)
		}
	}
	for _, quiet := range []string{"container:*:x", `"web-*"`, `"*:x"`, "rpm-ostreed.service:ok"} {
		if strings.Contains(got, quiet) {
			t.Errorf("warned about %s:\n%s", quiet, got)
		}
	}
}

// The default configuration reads the system drop-in directories the
// systemd way: /etc overrides /run overrides /usr/lib by file name.
func TestDropInPrecedence(t *testing.T) {
	root := t.TempDir()
	old := systemDropIns
	systemDropIns = []string{filepath.Join(root, "usr"), filepath.Join(root, "run"), filepath.Join(root, "etc")}
	defer func() { systemDropIns = old }()
	write(t, root, "usr/10-a.toml", "")
	write(t, root, "run/10-a.toml", "")
	write(t, root, "usr/20-b.toml", "")
	write(t, root, "etc/20-b.toml", "")
	write(t, root, "run/30-c.toml", "")
	got, err := DropIns(DefaultPath)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(root, "run/10-a.toml"), filepath.Join(root, "etc/20-b.toml"), filepath.Join(root, "run/30-c.toml")}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("drop-ins %v, want %v", got, want)
	}
}

// [metrics] is off unless set, merges key by key across drop-ins like
// [agent], and refuses, with file:line:col, what the agent could not serve
// or should not: a TCP address beyond loopback needs allow_remote, which
// any file may set.
func TestMetricsConfig(t *testing.T) {
	if m := Default().Metrics; m != (MetricsConfig{}) {
		t.Errorf("default [metrics] = %+v, want everything off", m)
	}
	dir := t.TempDir()
	f := write(t, dir, "capd.toml", "[metrics]\nsocket = \"/run/capd/metrics.sock\"\nlisten = \"127.0.0.1:9417\"\n")
	c, err := Load(f, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := (MetricsConfig{Socket: "/run/capd/metrics.sock", Listen: "127.0.0.1:9417"}); c.Metrics != want {
		t.Errorf("[metrics] = %+v, want %+v", c.Metrics, want)
	}
	if a := c.Metrics.ListenAddr(); a.Port() != 9417 || !a.Addr().IsLoopback() {
		t.Errorf("ListenAddr = %v", a)
	}
	// A drop-in overrides one key and keeps the others; "" turns one off.
	write(t, dir, "conf.d/10-m.toml", "[metrics]\nsocket = \"\"\nlisten = \"[::1]:0\"\n")
	if c, err = Load(f, false); err != nil {
		t.Fatal(err)
	}
	if want := (MetricsConfig{Listen: "[::1]:0"}); c.Metrics != want {
		t.Errorf("after the drop-in [metrics] = %+v, want %+v", c.Metrics, want)
	}

	for _, tc := range []struct{ body, want string }{
		{"[metrics]\nlisten = \"0.0.0.0:9417\"\n", `capd.toml:2:1: metrics.listen "0.0.0.0:9417" is not a loopback address: set metrics.allow_remote = true`},
		{"[metrics]\n  listen = \"192.0.2.1:9417\"\n", `capd.toml:2:3: metrics.listen "192.0.2.1:9417" is not a loopback address`},
		{"[metrics]\nlisten = \"[::]:9417\"\nallow_remote = false\n", `capd.toml:2:1: metrics.listen "[::]:9417" is not a loopback address`},
		{"[metrics]\nlisten = \"localhost:9417\"\n", `capd.toml:2:1: metrics.listen "localhost:9417" is not IP:PORT`},
		{"[metrics]\nlisten = \"127.0.0.1\"\n", `capd.toml:2:1: metrics.listen "127.0.0.1" is not IP:PORT`},
		{"[metrics]\nlisten = \"[fe80::1%eth0]:9417\"\nallow_remote = true\n", `capd.toml:2:1: metrics.listen "[fe80::1%eth0]:9417": an address with a zone is not supported`},
		{"[metrics]\nsocket = \"metrics.sock\"\n", `capd.toml:2:1: metrics.socket must be a clean absolute path, not "metrics.sock"`},
		{"[metrics]\nsocket = \"/run/capd/../m.sock\"\n", `capd.toml:2:1: metrics.socket must be a clean absolute path`},
		{"[metrics]\nsocket = \"/" + strings.Repeat("x", 107) + "\"\n", `capd.toml:2:1: metrics.socket is 108 bytes long; a unix socket path has at most 107`},
		{"[metrics]\nport = 9417\n", `capd.toml:2:1: unknown key "metrics.port"`},
		{"[metrics]\nallow_remote = \"yes\"\n", `capd.toml:2:1: `},
	} {
		_, err := Load(write(t, t.TempDir(), "capd.toml", tc.body), false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want %q", tc.body, err, tc.want)
		}
	}

	// allow_remote from a drop-in lets the main file's address through;
	// the error of a refused one names the file that set it.
	dir = t.TempDir()
	f = write(t, dir, "capd.toml", "[metrics]\nlisten = \"0.0.0.0:9417\"\n")
	write(t, dir, "conf.d/20-remote.toml", "[metrics]\nallow_remote = true\n")
	if c, err = Load(f, false); err != nil || c.Metrics.Listen != "0.0.0.0:9417" || !c.Metrics.AllowRemote {
		t.Errorf("allow_remote in a drop-in: %+v, %v", c.Metrics, err)
	}
	dir = t.TempDir()
	f = write(t, dir, "capd.toml", "[metrics]\nallow_remote = true\n")
	d := write(t, dir, "conf.d/20-remote.toml", "[metrics]\nallow_remote = false\n\nlisten = \"10.0.0.1:9417\"\n")
	if _, err = Load(f, false); err == nil || !strings.Contains(err.Error(), d+":4:1: metrics.listen") {
		t.Errorf("allow_remote = false in the last file: %v, want the drop-in's line 4", err)
	}
}
