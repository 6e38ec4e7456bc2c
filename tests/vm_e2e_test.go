package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

// TestVMEnforcedRevocation runs tests/vmguest, the end-to-end tests of
// kernel-enforced revocation (the agent under fdsup, consumers in their
// own cgroups), in QEMU guests with Debian's stock 6.12 and 6.1 kernels,
// which run BPF LSM where this project's hosts may not. One boot per
// kernel runs them all. Needs scripts/install-vm-deps.sh; fails, never
// skips, without it.
func TestVMEnforcedRevocation(t *testing.T) {
	root, _ := filepath.Abs("..")
	dir := t.TempDir()
	start := time.Now()
	builds := [][]string{
		{"test", "-c", "-tags", "vmguest", "-o", filepath.Join(dir, "vmguest.test"), "./tests/vmguest"},
		{"build", "-o", filepath.Join(dir, "capd-full"), "./cmd/capd-full"},
		{"build", "-o", filepath.Join(dir, "fdsup"), "./tests/fdsup"},
	}
	for _, args := range builds {
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static: the guest has busybox only
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Logf("built the guest binaries in %v", time.Since(start).Round(time.Millisecond))
	files := map[string]string{
		"/bin/vmguest.test": filepath.Join(dir, "vmguest.test"),
		"/bin/capd-full":    filepath.Join(dir, "capd-full"),
		"/bin/fdsup":        filepath.Join(dir, "fdsup"),
	}
	for _, version := range []string{"6.12", "6.1"} {
		t.Run(version, func(t *testing.T) {
			t.Parallel() // one vCPU each
			kernel := testutil.VMKernel(t, version)
			boot := time.Now()
			res := testutil.RunVM(t, testutil.VMOptions{
				Kernel:  kernel,
				Files:   files,
				Timeout: 12 * time.Minute,
				Steps: []testutil.VMStep{
					{Name: "e2e", Argv: []string{"/bin/vmguest.test", "-test.v", "-test.timeout=8m"}},
				},
			})
			t.Logf("guest %s: boot, tests and poweroff took %v", version, time.Since(boot).Round(time.Second))
			for _, r := range res {
				if r.ExitCode != 0 || !strings.Contains(r.Output, "\nPASS\n") && !strings.HasPrefix(r.Output, "PASS\n") {
					t.Errorf("guest %s %s: exit %d:\n%s", version, r.Name, r.ExitCode, r.Output)
					continue
				}
				t.Logf("guest %s %s:\n%s", version, r.Name, r.Output)
			}
		})
	}
}
