package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/linux"
)

func openFile(t *testing.T) int {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("x"), 0o644)
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func metaFD(t *testing.T, m any, seal bool) int {
	t.Helper()
	b, _ := json.Marshal(m)
	if seal {
		fd, err := sealedMemfd("m", b)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	fd, err := linux.MemfdCreate("m")
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(fd, b)
	return fd
}

// Bad state handed to the agent at start is reported and skipped, never
// fatal, and every fd is either adopted or closed (TestMain checks leaks).
func TestRestoreSkipsBadState(t *testing.T) {
	rec := func(id, name string, pinned bool) record {
		return record{ID: id, Owner: "cgroup:/", Name: name, Pinned: pinned, Kind: "file", Cgroup: "/", OwnerCg: "/", Published: time.Now()}
	}
	expired := rec("e-3", "old", true)
	expired.Expires = time.Now().Add(-time.Minute)
	good := meta{Entries: []record{rec("e-1", "kept", true), rec("e-2", "nofd", true), expired},
		Containers: []ctrRecord{{FD: "c-1", ID: "gone", Identity: "container:gone", Cgroup: "/gone"}}}

	for _, tc := range []struct {
		name string
		fds  func() map[string]int
		want []string // entries restored
	}{
		{"good metadata with gaps", func() map[string]int {
			return map[string]int{
				"capd-meta-3": metaFD(t, good, true),
				"capd-meta-1": metaFD(t, meta{}, true), // older generation: ignored
				"e-1":         openFile(t),
				"e-3":         openFile(t),
				"e-9":         openFile(t), // no metadata
			}
		}, []string{"kept"}},
		{"unsealed metadata", func() map[string]int {
			return map[string]int{"capd-meta-3": metaFD(t, good, false), "e-1": openFile(t)}
		}, nil},
		{"corrupt metadata", func() map[string]int {
			fd, _ := sealedMemfd("m", []byte("{not json"))
			return map[string]int{"capd-meta-3": fd, "e-1": openFile(t)}
		}, nil},
		{"not a memfd", func() map[string]int {
			return map[string]int{"capd-meta-3": openFile(t), "e-1": openFile(t)}
		}, nil},
		{"no metadata at all", func() map[string]int {
			return map[string]int{"e-1": openFile(t), "c-1": openFile(t), "stray": openFile(t)}
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, policy.Default())
			if n := s.Restore(tc.fds()); n != len(tc.want) {
				t.Fatalf("restored %d entries, want %d", n, len(tc.want))
			}
			for _, name := range tc.want {
				e := s.store.acquire("cgroup:/", name)
				if e == nil {
					t.Fatalf("%s not restored", name)
				}
				e.release()
			}
			if s.Entries() != len(tc.want) || s.reg.len() != 0 {
				t.Fatalf("store holds %d entries, %d containers", s.Entries(), s.reg.len())
			}
			s.serving(t)
		})
	}
}
