package tests

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capd-dev/capd/internal/testutil"
)

// TestSeedDemo runs the demo program (make demo) and checks it narrates
// every step of the seed scenario and succeeds.
func TestSeedDemo(t *testing.T) {
	testutil.RequireRoot(t)
	seed := filepath.Join(t.TempDir(), "seed")
	root, _ := filepath.Abs("..")
	build := exec.Command("go", "build", "-o", seed, "./examples/seed")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build demo: %v\n%s", err, out)
	}
	out, err := exec.Command(seed, "-capd", capd).CombinedOutput()
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	for _, w := range []string{
		"I am rpm-ostreed.service",
		`published b as "zincati-fd"`,
		"LISTEN_FDS=2 LISTEN_FDNAMES=zincati-fd:foo-op-fd",
		"kcmp says it is my foo-op-fd token: true",
		`rpm-ostreed answered "foo-op done"`,
		"still verifies: false",
		"not-found",
		"seed scenario complete",
	} {
		if !strings.Contains(string(out), w) {
			t.Errorf("demo output lacks %q:\n%s", w, out)
		}
	}
}
