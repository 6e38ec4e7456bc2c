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

func stored(m map[string]int) []Stored {
	var out []Stored
	for name, fd := range m {
		out = append(out, Stored{name, fd})
	}
	return out
}

// Bad state handed to the agent at start is reported and skipped, never
// fatal, and every fd is either adopted or closed (TestMain checks leaks).
func TestRestoreSkipsBadState(t *testing.T) {
	file := openFile(t) // the file e-1's record describes
	defer unix.Close(file)
	dev, ino, _ := linux.FileID(file)
	rec := func(id, name string, pinned bool) record {
		return record{ID: id, Owner: "cgroup:/", Name: name, Pinned: pinned, Kind: "file", Cgroup: "/", OwnerCg: "/", Published: time.Now(), Dev: dev, Ino: ino}
	}
	dup := func() int { fd, _ := unix.Dup(file); return fd }
	expired := rec("e-3", "old", true)
	expired.Expires = time.Now().Add(-time.Minute)
	good := meta{Entries: []record{rec("e-1", "kept", true), rec("e-2", "nofd", true), expired},
		Containers: []ctrRecord{{FD: "c-1", ID: "gone", Identity: "container:gone", Cgroup: "/gone"}}}
	bad := func(mut func(*record)) meta {
		r := rec("e-1", "kept", true)
		mut(&r)
		return meta{Entries: []record{r}}
	}

	for _, tc := range []struct {
		name string
		fds  func() []Stored
		want []string // entries restored
	}{
		{"good metadata with gaps", func() []Stored {
			return stored(map[string]int{
				"capd-meta-3": metaFD(t, good, true),
				"capd-meta-1": metaFD(t, meta{}, true), // older generation: ignored
				"e-1":         dup(),
				"e-3":         dup(),
				"e-9":         dup(), // no metadata
			})
		}, []string{"kept"}},
		{"another file under the recorded name", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, good, true), "e-1": openFile(t)})
		}, nil},
		{"two fds under one name, one of them the file", func() []Stored {
			return append(stored(map[string]int{"capd-meta-3": metaFD(t, good, true), "e-1": openFile(t)}), Stored{"e-1", dup()})
		}, []string{"kept"}},
		{"another kind", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *record) { r.Kind = "socket" }), true), "e-1": dup()})
		}, nil},
		{"cgroup x", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *record) { r.Cgroup, r.Pinned = "x", true }), true), "e-1": dup()})
		}, nil},
		{"cgroup empty", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *record) { r.Cgroup = "" }), true), "e-1": dup()})
		}, nil},
		{"cgroup a/b", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *record) { r.Cgroup, r.OwnerCg = "a/b", "a" }), true), "e-1": dup()})
		}, nil},
		{"cgroup outside its owner", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *record) { r.Cgroup, r.OwnerCg = "/a", "/b" }), true), "e-1": dup()})
		}, nil},
		{"bad id", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *record) { r.ID = "e-01" }), true), "e-01": dup()})
		}, nil},
		{"bad name", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *record) { r.Name = "a:b" }), true), "e-1": dup()})
		}, nil},
		{"unsealed metadata", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, good, false), "e-1": dup()})
		}, nil},
		{"corrupt metadata", func() []Stored {
			fd, _ := sealedMemfd("m", []byte("{not json"))
			return stored(map[string]int{"capd-meta-3": fd, "e-1": dup()})
		}, nil},
		{"not a memfd", func() []Stored {
			return stored(map[string]int{"capd-meta-3": openFile(t), "e-1": dup()})
		}, nil},
		{"no metadata at all", func() []Stored {
			return stored(map[string]int{"e-1": dup(), "c-1": openFile(t), "stray": openFile(t)})
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
				s.store.release(e)
			}
			if s.Entries() != len(tc.want) || s.reg.len() != 0 {
				t.Fatalf("store holds %d entries, %d containers", s.Entries(), s.reg.len())
			}
			s.serving(t)
		})
	}
}
