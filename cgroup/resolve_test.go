package cgroup

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPathByID resolves a freshly made cgroup from its kernel id, the way the
// agent resolves a peer's cgroup from PIDFD_GET_INFO.
func TestPathByID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestPathByID needs root (open_by_handle_at needs CAP_DAC_READ_SEARCH); run the tests as root")
	}
	r, err := NewResolver()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rel := "/capd-resolve-test.slice"
	dir := r.Abs(rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	got, err := r.PathByID(st.Ino)
	if err != nil {
		t.Fatal(err)
	}
	if got != rel {
		t.Fatalf("PathByID(%d) = %q, want %q", st.Ino, got, rel)
	}
	if err := unix.Stat(r.Abs("/"), &st); err != nil {
		t.Fatal(err)
	}
	if got, err := r.PathByID(st.Ino); err != nil || got != "/" {
		t.Fatalf("PathByID(root) = %q, %v; want /", got, err)
	}
}
