package enforce

import (
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/activation"
)

// TestLoad runs on any kernel: where BPF LSM works Load must give a
// working Enforcer; where it does not (this project's CI host refuses
// every trampoline program with EPERM) it must say ErrUnavailable with the
// reason, and leave no fd behind (TestMain's leak check). The full
// behaviour is tested in a VM (vmguest tests, tests/bpflsm_vm_test.go).
func TestLoad(t *testing.T) {
	e, err := Load()
	if err != nil {
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Load: %v, not ErrUnavailable", err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "not among the active LSMs") && !errors.Is(err, unix.EPERM) &&
			!errors.Is(err, unix.EINVAL) && !errors.Is(err, enotsupp) && !strings.Contains(msg, "no LSM hook") {
			t.Fatalf("Load: %v: no reason a reader could act on", err)
		}
		t.Logf("Load: %v", err)
		if d := Describe(); !strings.HasPrefix(d, "advisory: ") || !strings.Contains(d, ErrUnavailable.Error()) {
			t.Fatalf("Describe() = %q", d)
		}
		return
	}
	defer e.Close()
	t.Logf("Load: attached %v", e.Hooks())
	f, err := os.CreateTemp("", "enforce")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := e.Revoke(int(f.Fd()), 1, 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("x")); !errors.Is(err, unix.EPERM) {
		t.Fatalf("write after Revoke: %v, want EPERM", err)
	}
	if d := Describe(); d != "bpf-lsm" {
		t.Fatalf("Describe() = %q", d)
	}
}

func TestIsStored(t *testing.T) {
	for name, want := range map[string]bool{
		Prefix + "map-revoked": true,
		"capd-bpf-v9-link-x":   true,
		"capd-entry-foo":       false,
		"":                     false,
	} {
		if got := IsStored(name); got != want {
			t.Errorf("IsStored(%q) = %v", name, got)
		}
	}
}

// TestAdoptRefuses: Adopt of fds that are no BPF objects, of another
// layout version, or an incomplete set, fails with ErrAdopt or the
// kernel's error, closes what it duplicated and leaves the caller's fds
// open.
func TestAdoptRefuses(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, files := range [][]activation.File{
		nil,
		{{Name: "capd-entry-x", FD: int(r.Fd())}},
		{{Name: "capd-bpf-v0-map-revoked", FD: int(r.Fd())}},
		{{Name: Prefix + "map-revoked", FD: int(r.Fd())}},
		{{Name: Prefix + "link-file_permission", FD: int(r.Fd())}},
		{{Name: Prefix + "frob", FD: int(r.Fd())}},
	} {
		e, err := Adopt(files)
		if err == nil {
			e.Close()
			t.Fatalf("Adopt(%v) succeeded", files)
		}
		t.Logf("Adopt(%v): %v", files, err)
	}
	if _, err := unix.FcntlInt(r.Fd(), unix.F_GETFD, 0); err != nil {
		t.Fatalf("Adopt closed the caller's fd: %v", err)
	}
}
