package store

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/capd-dev/capd/agent/policy"
)

// An entry gives back what its Spec said, however it packs it.
func TestEntrySpec(t *testing.T) {
	at := time.Date(2030, 5, 6, 7, 8, 9, 10, time.UTC)
	e := newEntry(t, "container:web", "db", func(sp *Spec) {
		sp.Pinned, sp.Limited = true, true
		sp.Allow = []policy.Pattern{"a.service", "container:*"}
		sp.Cgroup, sp.OwnerCgroup = "/machine.slice/web/payload", "/machine.slice/web"
		sp.UID, sp.Acct = 1000, 100000
		sp.Dev, sp.Ino = 1<<32-1, 1<<63+5
		sp.Published, sp.Expires = at, at.Add(time.Hour)
	})
	defer scratch(t).Release(e)
	dev, ino := e.File()
	switch {
	case e.Owner() != "container:web" || e.Name() != "db" || e.Key() != (Key{"container:web", "db"}):
		t.Errorf("key %+v", e.Key())
	case !e.Pinned() || !e.Limited() || e.UID() != 1000 || e.Acct() != 100000:
		t.Errorf("pinned %v limited %v uid %d acct %d", e.Pinned(), e.Limited(), e.UID(), e.Acct())
	case !slices.Equal(e.Allow(), []policy.Pattern{"a.service", "container:*"}):
		t.Errorf("allow %v", e.Allow())
	case e.Cgroup() != "/machine.slice/web/payload" || e.OwnerCgroup() != "/machine.slice/web":
		t.Errorf("cgroup %s, owner cgroup %s", e.Cgroup(), e.OwnerCgroup())
	case dev != 1<<32-1 || ino != 1<<63+5:
		t.Errorf("file %d %d", dev, ino)
	case !e.Published().Equal(at) || !e.Expires().Equal(at.Add(time.Hour)):
		t.Errorf("published %v, expires %v", e.Published(), e.Expires())
	case e.ID() != "":
		t.Errorf("unpublished entry has id %q", e.ID())
	}
	if tg := e.Target(); tg.Owner != "container:web" || tg.Name != "db" || tg.UID != 1000 || len(tg.Allow) != 2 || tg.Kind != "memfd" {
		t.Errorf("target %+v", tg)
	}

	// The zero times stay zero, an owner cgroup that is not above the
	// cgroup is kept as it is, and an expiry at the base instant comes a
	// nanosecond early. Entries of one publisher share one origin.
	z := newEntry(t, "x.service", "z", func(sp *Spec) {
		sp.Published = time.Time{}
		sp.Cgroup, sp.OwnerCgroup = "/a/b", "/a/bc"
	})
	defer scratch(t).Release(z)
	if !z.Published().IsZero() || !z.Expires().IsZero() || z.Allow() != nil || z.OwnerCgroup() != "/a/bc" {
		t.Errorf("published %v, expires %v, allow %v, owner cgroup %s", z.Published(), z.Expires(), z.Allow(), z.OwnerCgroup())
	}
	b := newEntry(t, "x.service", "b", expires(monoBase))
	defer scratch(t).Release(b)
	if !b.Expires().Equal(monoBase.Add(-time.Nanosecond)) || !b.expiresBy(monoBase) || b.expiresBy(monoBase.Add(-2*time.Nanosecond)) {
		t.Errorf("an expiry at the base: %v", b.Expires())
	}
	if z2 := newEntry(t, "x.service", "z2", inCgroup("/a/b", "/a/bc")); z2.origin != z.origin {
		t.Error("two entries of one publisher have origins of their own")
	} else {
		scratch(t).Release(z2)
	}
	if size := unsafe.Sizeof(Entry{}); size > 112 {
		t.Errorf("an Entry takes %d bytes, more than 112", size)
	}
}

// scratch is a store without a watcher, to release unpublished entries.
func scratch(t *testing.T) *Store { return newStore(t, nil, nil) }

// A restored entry keeps the id it was recorded under, even one that
// EntryID would not give it now.
func TestRestoreKeepsRecordedID(t *testing.T) {
	f := newFixture(t)
	for _, id := range []string{"e-7", "e-8.old-style", "not-an-id", "e-9.x.service.c"} {
		e := newEntry(t, "x.service", "n"+id)
		if err := f.s.Restore(e, id); err != nil {
			t.Fatal(err)
		}
		if e.ID() != id {
			t.Errorf("restored under %q, id %q", id, e.ID())
		}
	}
	c := newEntry(t, "x.service", "c")
	if err := f.s.Restore(c, "e-9.x.service.c"); err != nil || c.ID() != "e-9.x.service.c" || c.more != nil {
		t.Fatalf("regular id: %v, %q, more %+v", err, c.ID(), c.more)
	}
}

// The index finds what a map would, through growth, collisions, deletion
// by backward shift and shrinking.
func TestIndex(t *testing.T) {
	x := newIndex()
	entry := func(owner, name string) *Entry { return NewEntry(&Spec{Owner: owner, Name: name}, -1) }
	if x.get("a", "b") != nil {
		t.Fatal("get in an empty index")
	}
	x.del(entry("a", "b")) // absent from an empty index: nothing
	model := map[Key]*Entry{}
	var pool []*Entry
	for i := range 300 {
		pool = append(pool, entry(fmt.Sprintf("o%d", i%7), fmt.Sprintf("n%d", i)))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	maxSlots, shrunk := 0, 0
	for step := range 20000 {
		e := pool[rng.IntN(len(pool))]
		// Grow to most of the pool, then shrink to a few entries.
		grow := step < 8000 || step >= 14000 && step < 16000
		switch _, in := model[e.Key()]; {
		case !in && (grow || rng.IntN(8) == 0):
			x.put(e)
			model[e.Key()] = e
		case in && (!grow || rng.IntN(4) == 0):
			x.del(e)
			delete(model, e.Key())
		default:
			x.del(entry(e.Owner(), e.Name()+"-absent"))
		}
		maxSlots = max(maxSlots, len(x.slots))
		if step == 13999 {
			shrunk = len(x.slots)
		}
		if x.Len() != len(model) {
			t.Fatalf("step %d: %d entries, want %d", step, x.Len(), len(model))
		}
		if step%97 == 0 {
			for _, p := range pool {
				if got, want := x.get(p.Owner(), p.Name()), model[p.Key()]; got != want {
					t.Fatalf("step %d: get %v = %p, want %p", step, p.Key(), got, want)
				}
			}
			if n := len(slices.Collect(x.all())); n != len(model) {
				t.Fatalf("step %d: all yields %d, want %d", step, n, len(model))
			}
		}
	}
	if maxSlots < 256 || shrunk > maxSlots/4 {
		t.Fatalf("index grew to %d slots and shrank to %d", maxSlots, shrunk)
	}
	x.put(entry("a", "1"))
	x.put(entry("a", "2"))
	n := 0
	for range x.all() {
		n++
		break // stops when told
	}
	if n != 1 {
		t.Fatalf("all went on after a break: %d", n)
	}
}
