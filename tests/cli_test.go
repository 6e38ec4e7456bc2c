package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// capd runs acquire, publish, hook and whoami itself and hands every other
// command line to capd-full. The two must be one command line: for each
// of these command lines, capd and capd-full exit alike and print the same
// (with the agent's answers, the help texts, every usage error).
func TestCapdIsCapdFull(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	full := filepath.Join(filepath.Dir(capd), "capd-full")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "token")
	dir := t.TempDir()
	echo := []string{"--", "sh", "-c", `echo "$LISTEN_FDS $LISTEN_FDNAMES"; cat /proc/self/fd/3`}
	for _, tc := range []struct {
		unit string
		args []string
	}{
		{"", nil},
		{"", []string{"frobnicate"}},
		{"", []string{"--help"}},
		{"zincati.service", append([]string{"acquire", "rpm-ostreed.service:zincati-fd"}, echo...)},
		{"zincati.service", append([]string{"acquire", "--optional", "rpm-ostreed.service:zincati-fd", "rpm-ostreed.service:nope"}, echo...)},
		{"zincati.service", append([]string{"acquire", "--wait=5s", "rpm-ostreed.service:zincati-fd"}, echo...)},
		{"zincati.service", []string{"acquire", "--wait=10ms", "rpm-ostreed.service:nope", "--", "true"}},
		{"zincati.service", []string{"acquire", "--wait=soon", "rpm-ostreed.service:nope", "--", "true"}},
		{"zincati.service", []string{"acquire", "rpm-ostreed.service:nope", "--", "true"}},
		{"zincati.service", []string{"acquire", "nocolon", "--", "true"}},
		{"zincati.service", []string{"acquire", "rpm-ostreed.service:zincati-fd", "--", "/nonexistent/prog"}},
		{"", []string{"acquire"}},
		{"", []string{"acquire", "a.service:x"}},
		{"", []string{"acquire", "--", "true"}},
		{"", []string{"acquire", "a.service:x", "--"}},
		{"", []string{"acquire", "--bogus", "a.service:x", "--", "true"}},
		{"", []string{"acquire", "--help"}},
		{"", []string{"acquire", "-h", "a.service:x", "--", "true"}},
		{"zincati.service", []string{"acquire", "zincati.service:mine", "--", "true"}},
		{"", []string{"publish"}},
		{"", []string{"publish", "--ttl", "0s", "x"}},
		{"", []string{"publish", "--ttl", "soon", "x"}},
		{"", []string{"publish", "bad/name", "--fd", "0"}},
		{"", []string{"publish", "x", "--fd", "9"}},
		{"", []string{"publish", "a", "b"}},
		{"", []string{"publish", "--listen-fds"}},
		{"", []string{"publish", "x", "--"}},
		{"", []string{"publish", "--help"}},
		{"rpm-ostreed.service", []string{"publish", "zincati-fd", "--fd", "0"}},
		{"", []string{"whoami"}},
		{"", []string{"whoami", "--json"}},
		{"", []string{"whoami", "extra"}},
		{"", []string{"hook", "--help"}},
		{"", []string{"hook", "extra"}},
		{"", []string{"hook", "--timeout", "-1s"}},
		{"", []string{"hook", "--socket", "/nonexistent"}},
		{"", []string{"hook", "install", "--dir", dir}},
		{"", []string{"list"}},
		{"", []string{"version", "--json"}},
	} {
		name := strings.Join(tc.args, " ")
		lean := runWith(t, e, tc.unit, capd, tc.args)
		want := runWith(t, e, tc.unit, full, tc.args)
		// whoami --json names the pid asking.
		lean.stdout = pidKey.ReplaceAllString(lean.stdout, `"pid": PID`)
		want.stdout = pidKey.ReplaceAllString(want.stdout, `"pid": PID`)
		if lean != want {
			t.Errorf("capd %s:\n got  %+v\n want %+v (capd-full)", name, lean, want)
		}
	}
	// The hook capd-full installs runs capd, not capd-full.
	b, err := os.ReadFile(filepath.Join(dir, "capd.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"path": "`+capd+`"`) {
		t.Errorf("hooks.d file runs another binary than %s:\n%s", capd, b)
	}
}

var pidKey = regexp.MustCompile(`"pid": [0-9]+`)

// Without capd-full beside it, capd still runs the start-up commands and
// says what is missing for the others.
func TestCapdWithoutCapdFull(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "zincati.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "token")
	alone := filepath.Join(t.TempDir(), "capd")
	b, err := os.ReadFile(capd)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(alone, b, 0o755); err != nil {
		t.Fatal(err)
	}
	r := runWith(t, e, "zincati.service", alone, []string{"acquire", "rpm-ostreed.service:zincati-fd", "--", "sh", "-c", "cat <&3"})
	if r.code != 0 || r.stdout != "token" {
		t.Errorf("acquire without capd-full: %+v", r)
	}
	if r := runWith(t, e, "rpm-ostreed.service", alone, []string{"publish", "other", "--fd", "0"}); r.code != 0 {
		t.Errorf("publish without capd-full: %+v", r)
	}
	if r := runWith(t, e, "rpm-ostreed.service", alone, []string{"whoami"}); r.code != 0 || r.stdout != "rpm-ostreed.service\n" {
		t.Errorf("whoami without capd-full: %+v", r)
	}
	// An unannotated container's state: the hook leaves it alone.
	hook := exec.Command(alone, "hook", "--socket", e.agent.Socket)
	hook.Stdin = strings.NewReader(`{"ociVersion":"1.0.2","id":"x","status":"creating","pid":1,"bundle":"/nonexistent"}`)
	if out, err := hook.CombinedOutput(); err != nil {
		t.Errorf("hook without capd-full: %v\n%s", err, out)
	}
	r = runWith(t, e, "", alone, []string{"list"})
	if r.code != 1 || !strings.Contains(r.stderr, "capd-full") || !strings.Contains(r.stderr, "not installed beside") {
		t.Errorf("list without capd-full: %+v", r)
	}
}

// runWith runs bin ARGS in unit's cgroup ("" for the test's own) against
// e's agent, with stdin a file holding "stdin".
func runWith(t *testing.T, e *env, unit, bin string, args []string) result {
	t.Helper()
	return e.runBin(unit, 0, tempFile(t, "stdin"), nil, bin, args...)
}
