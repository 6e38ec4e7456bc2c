package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

// TestBPFLSM runs agent/internal/enforce's vmguest tests in
// QEMU guests with Debian's stock 6.1 and 6.12 kernels (booted with bpf
// among the LSMs), since this project's hosts may refuse BPF LSM. Needs
// scripts/install-vm-deps.sh; fails, never skips, without it.
func TestBPFLSM(t *testing.T) {
	root, _ := filepath.Abs("..")
	bin := filepath.Join(t.TempDir(), "enforce.test")
	cmd := exec.Command("go", "test", "-c", "-tags", "vmguest", "-o", bin, "./agent/internal/enforce")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the guest tests: %v\n%s", err, out)
	}
	for _, version := range []string{"6.12", "6.1"} {
		t.Run(version, func(t *testing.T) {
			t.Parallel() // one vCPU each
			kernel := testutil.VMKernel(t, version)
			res := testutil.RunVM(t, testutil.VMOptions{
				Kernel:  kernel,
				Files:   map[string]string{"/bin/enforce.test": bin},
				Timeout: 10 * time.Minute,
				Steps: []testutil.VMStep{
					{Name: "test", Argv: []string{"/bin/enforce.test", "-test.v", "-test.timeout=5m"}},
				},
			})
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

// BenchmarkBPFLSMGuest runs agent/internal/enforce's guest benchmarks in
// one guest (Debian's 6.12, alone: TCG on a loaded host is noisier still)
// and reports their ratios: read(2) and send+recv on unrelated fds with
// the programs attached / without, alternating in one run, and Revoke's
// cost with 10,000 keys. Emulated: the ratios are the guest's, not a
// native kernel's. Run with -benchtime=1x (bench/bpflsm.sh).
func BenchmarkBPFLSMGuest(b *testing.B) {
	root, _ := filepath.Abs("..")
	bin := filepath.Join(b.TempDir(), "enforce.test")
	cmd := exec.Command("go", "test", "-c", "-tags", "vmguest", "-o", bin, "./agent/internal/enforce")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build the guest benchmarks: %v\n%s", err, out)
	}
	for i := 0; i < b.N; i++ {
		res := testutil.RunVM(b, testutil.VMOptions{
			Kernel:  testutil.VMKernel(b, "6.12"),
			Files:   map[string]string{"/bin/enforce.test": bin},
			Timeout: 15 * time.Minute,
			Steps: []testutil.VMStep{
				{Name: "bench", Argv: []string{"/bin/enforce.test", "-test.run=^$", "-test.bench=.", "-test.benchtime=1x", "-test.timeout=10m"}},
			},
		})
		for _, r := range res {
			if r.ExitCode != 0 {
				b.Fatalf("guest bench: exit %d:\n%s", r.ExitCode, r.Output)
			}
			b.Logf("guest:\n%s", r.Output)
			for _, line := range strings.Split(r.Output, "\n") {
				f := strings.Fields(line)
				for j := 1; j+1 < len(f); j += 2 {
					if v, err := strconv.ParseFloat(f[j], 64); err == nil && (strings.HasPrefix(f[j+1], "x-") || strings.HasPrefix(f[j+1], "ns/revoke")) {
						b.ReportMetric(v, f[j+1])
					}
				}
			}
		}
	}
}
