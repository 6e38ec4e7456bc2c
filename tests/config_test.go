package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// capd check-config reports what a configuration holds, fails with file,
// line and column, and warns about patterns that can never match; the
// agent logs the same warnings at start.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "capd.toml")
	os.WriteFile(good, []byte("[[grant]]\nconsumer = \"zincati.service\"\nacquire = [\"rpm-ostreed:zincati-fd\"]\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "conf.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "conf.d", "10-q.toml"), []byte("[[quota]]\nunit = \"x.service\"\nmax_pinned = 1\n"), 0o644)
	r := runCapd(t, "check-config", good)
	if r.code != 0 || !strings.Contains(r.stdout, "1 grants, 1 quotas from 2 files") {
		t.Fatalf("check-config: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "capd.toml:3:1: grant #1: entry \"rpm-ostreed:zincati-fd\" can never match") {
		t.Errorf("no warning with a position: %q", r.stderr)
	}
	bad := filepath.Join(t.TempDir(), "capd.toml")
	os.WriteFile(bad, []byte("[[grant]]\nconsumer = \"a.service\"\nacquire = [\"b.service:x\"]\n\n[[grant]]\nconsumer = \"c.service\"\n"), 0o644)
	expectFail(t, runCapd(t, "check-config", bad), 1, bad+":5:1: grant #2")
	// CAPD_CONFIG names the file for the agent and check-config alike.
	cmd := exec.Command(capd, "check-config")
	cmd.Env = append(os.Environ(), "CAPD_CONFIG="+bad)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), bad+":5:1") {
		t.Errorf("CAPD_CONFIG: %v %s", err, out)
	}
	// The agent warns at start.
	e := newEnv(t, "[[grant]]\nconsumer = \"zincati\"\nacquire = [\"a.service:x\"]\n")
	e.agent.WaitLog(t, "can never match", 0)
}

func runCapd(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(capd, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}
