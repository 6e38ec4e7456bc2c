package persist

import (
	"context"
	"encoding/json"
	"io"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

// cgroups is a fake cgroup tree for the store and registry: the paths in
// it have processes; nothing else exists.
type cgroups map[string]uint64 // path -> inode

func (c cgroups) Add(p string) (uint64, bool, bool, error) { _, ok := c[p]; return 1, ok, false, nil }
func (c cgroups) Hold(string, uint64) (uint64, bool)       { return 0, false }
func (c cgroups) Remove(string)                            {}
func (c cgroups) ID(p string) (uint64, error) {
	if id, ok := c[p]; ok {
		return id, nil
	}
	return 0, os.ErrNotExist
}
func (c cgroups) Populated(p string) (bool, error) { _, ok := c[p]; return ok, nil }

// fixture is a store and registry as an agent starts with them.
type fixture struct {
	st  *store.Store
	reg *registry.Registry
	log *slog.Logger
}

func newFixture(t testing.TB, cg cgroups) *fixture {
	f := &fixture{st: store.New(cg, nil), reg: registry.NewRegistry(cg, cg), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	t.Cleanup(f.close)
	return f
}

func (f *fixture) close() {
	f.reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f.st.Close(ctx)
}

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
		fd, err := linux.SealedMemfd("m", b)
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
	rec := func(id, name string, pinned bool) Record {
		return Record{ID: id, Owner: "cgroup:/", Name: name, Pinned: pinned, Kind: "file", Cgroup: "/", OwnerCg: "/", Published: time.Now(), Dev: dev, Ino: ino}
	}
	dup := func() int { fd, _ := unix.Dup(file); return fd }
	expired := rec("e-3", "old", true)
	expired.Expires = time.Now().Add(-time.Minute)
	good := Meta{Entries: []Record{rec("e-1", "kept", true), rec("e-2", "nofd", true), expired},
		Containers: []CtrRecord{{FD: "c-1", ID: "gone", Identity: "container:gone", Cgroup: "/gone"}}}
	bad := func(mut func(*Record)) Meta {
		r := rec("e-1", "kept", true)
		mut(&r)
		return Meta{Entries: []Record{r}}
	}

	for _, tc := range []struct {
		name string
		fds  func() []Stored
		want []string // entries restored
	}{
		{"good metadata with gaps", func() []Stored {
			return stored(map[string]int{
				"capd-meta-3": metaFD(t, good, true),
				"capd-meta-1": metaFD(t, Meta{}, true), // older generation: ignored
				"e-1":         dup(),
				"e-3":         dup(),
				"e-9":         dup(), // no metadata
				"c-1":         openFile(t),
			})
		}, []string{"kept"}},
		{"another file under the recorded name", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, good, true), "e-1": openFile(t)})
		}, nil},
		{"two fds under one name, one of them the file", func() []Stored {
			return append(stored(map[string]int{"capd-meta-3": metaFD(t, good, true), "e-1": openFile(t)}), Stored{"e-1", dup()})
		}, []string{"kept"}},
		{"another kind", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *Record) { r.Kind = "socket" }), true), "e-1": dup()})
		}, nil},
		{"cgroup x", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *Record) { r.Cgroup, r.Pinned = "x", true }), true), "e-1": dup()})
		}, nil},
		{"cgroup empty", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *Record) { r.Cgroup = "" }), true), "e-1": dup()})
		}, nil},
		{"cgroup a/b", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *Record) { r.Cgroup, r.OwnerCg = "a/b", "a" }), true), "e-1": dup()})
		}, nil},
		{"cgroup outside its owner", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *Record) { r.Cgroup, r.OwnerCg = "/a", "/b" }), true), "e-1": dup()})
		}, nil},
		{"bad id", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *Record) { r.ID = "e-01" }), true), "e-01": dup()})
		}, nil},
		{"bad name", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, bad(func(r *Record) { r.Name = "a:b" }), true), "e-1": dup()})
		}, nil},
		{"unsealed metadata", func() []Stored {
			return stored(map[string]int{"capd-meta-3": metaFD(t, good, false), "e-1": dup()})
		}, nil},
		{"corrupt metadata", func() []Stored {
			fd, _ := linux.SealedMemfd("m", []byte("{not json"))
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
			f := newFixture(t, cgroups{})
			if n := Restore(f.log, tc.fds(), f.st, f.reg, nil); n != len(tc.want) {
				t.Fatalf("restored %d entries, want %d", n, len(tc.want))
			}
			for _, name := range tc.want {
				e := f.st.Acquire("cgroup:/", name)
				if e == nil {
					t.Fatalf("%s not restored", name)
				}
				f.st.Release(e)
			}
			if f.st.Len() != len(tc.want) || f.reg.Len() != 0 {
				t.Fatalf("store holds %d entries, %d containers", f.st.Len(), f.reg.Len())
			}
		})
	}
}

// What Handoff passes on, Restore takes back whole: entries with every
// field, registrations whose cgroup still has processes, and the entry
// numbering (a new publish never reuses an id).
func TestHandoffRestoresEverything(t *testing.T) {
	cg := cgroups{"/svc": 10, "/ctr": 11}
	from := newFixture(t, cg)
	if err := from.reg.Add(registry.New("c1", "web", "/ctr", 0)); err != nil {
		t.Fatal(err)
	}
	limits := &store.Limits{Max: 100, PerUID: 100, PinnedPerUID: 100, Node: noLimits}
	var want []Record
	for i, spec := range []struct {
		name   string
		pinned bool
		owner  string
	}{{"a", true, "/svc"}, {"b", false, "/svc"}, {"c", false, "/ctr"}} {
		fd, err := linux.MemfdCreate("e")
		if err != nil {
			t.Fatal(err)
		}
		sp := store.Spec{
			Owner: "x.service", Name: spec.name, Pinned: spec.pinned, Kind: linux.FdKind(fd), Cgroup: spec.owner, OwnerCgroup: spec.owner,
			UID: uint32(1000 + i), Acct: uint32(1000 + i), Limited: true, Published: time.Now().Truncate(time.Millisecond),
		}
		sp.Dev, sp.Ino, _ = linux.FileID(fd)
		if err := from.st.Publish(store.NewEntry(&sp, fd), 0, false, nil, limits); err != nil {
			t.Fatal(err)
		}
	}
	from.st.ReadLocked(func(next uint64, entries iter.Seq[*store.Entry], _ []store.Revoked) {
		want = snapshot(next, entries).Entries
	})

	names, fds, err := Handoff(from.st, from.reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The new process gets its own copies (exec keeps the fds; here: dup).
	var passed []Stored
	for i, fd := range fds {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		passed = append(passed, Stored{names[i], d})
	}
	from.close()
	for _, fd := range fds {
		// What exec does: the old process's copies close (CLOEXEC); the
		// metadata memfd is the caller's, the entries' the frozen store
		// keeps until then.
		linux.Close(fd)
	}

	to := newFixture(t, cg)
	if n := Restore(to.log, passed, to.st, to.reg, nil); n != 3 {
		t.Fatalf("restored %d entries, want 3", n)
	}
	var got []Record
	to.st.ReadLocked(func(next uint64, entries iter.Seq[*store.Entry], _ []store.Revoked) {
		got = snapshot(next, entries).Entries
	})
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Fatalf("restored\n%s\nwant\n%s", gb, wb)
	}
	if c := to.reg.Lookup("/ctr/x"); c == nil || c.Identity != "container:web" {
		t.Fatalf("registration not restored: %+v", c)
	}
	fd, _ := linux.MemfdCreate("e")
	e := store.NewEntry(&store.Spec{Owner: "x.service", Name: "d", Pinned: true, Cgroup: "/svc", OwnerCgroup: "/svc", Kind: "memfd"}, fd)
	if err := to.st.Publish(e, 0, false, nil, limits); err != nil {
		t.Fatal(err)
	}
	if n, _ := store.ParseEntryID(e.ID()); n != 4 {
		t.Fatalf("the next publish got id %s, want number 4", e.ID())
	}
}

func noLimits(string, bool) policy.Limits {
	return policy.Limits{MaxEntries: policy.Unlimited, MaxPinned: policy.Unlimited}
}
