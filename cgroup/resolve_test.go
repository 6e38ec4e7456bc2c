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

func TestRelativeBothLayouts(t *testing.T) {
	for _, tc := range []struct{ mount, abs, want string }{
		{"/sys/fs/cgroup", "/sys/fs/cgroup", "/"},
		{"/sys/fs/cgroup", "/sys/fs/cgroup/system.slice/zincati.service", "/system.slice/zincati.service"},
		{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/system.slice/zincati.service", "/system.slice/zincati.service"},
		{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified", "/"},
	} {
		r := &Resolver{mount: tc.mount}
		got, err := r.relative(tc.abs)
		if err != nil || got != tc.want {
			t.Errorf("relative(%q) on %s = %q, %v; want %q", tc.abs, tc.mount, got, err, tc.want)
		}
		if IdentityFromPath(got) != IdentityFromPath(tc.want) {
			t.Errorf("identity differs across layouts for %q", tc.abs)
		}
	}
	r := &Resolver{mount: "/sys/fs/cgroup/unified"}
	if _, err := r.relative("/sys/fs/cgroup/unifiedX/a"); err == nil {
		t.Error("path outside the mount accepted")
	}
}
