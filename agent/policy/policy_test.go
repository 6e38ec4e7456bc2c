package policy

import (
	"os"
	"path/filepath"
	"strings"
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
		if got := c.Allowed(tc.consumer, tc.owner, tc.name); got != tc.want {
			t.Errorf("Allowed(%q, %q:%q) = %v, want %v", tc.consumer, tc.owner, tc.name, got, tc.want)
		}
	}
}

func TestDefaultDenies(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "absent.toml"), true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Allowed("cgroup:/", "a.service", "x") {
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
		{"[[grant]]\nconsumer = \"a.service\"\nacqiure = [\"a.service:x\"]\n", `line 3: unknown key "grant.acqiure"`},
		{"[[grant]]\nconsumer = \"a.service\"\n", `missing or empty key "acquire"`},
		{"[[grant]]\nacquire = [\"a.service:x\"]\n", `missing key "consumer"`},
		{"[agent]\nidle_timeout = \"-3s\"\n", `line 2 (last key "agent.idle_timeout")`},
		{"[agent]\nmax_entries = -1\n", `line 2: agent.max_entries must be positive`},
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
