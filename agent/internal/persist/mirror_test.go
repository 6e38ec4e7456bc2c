package persist

import (
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/linux"
)

// fakeFDStore is systemd's fd store as the mirror uses it, in this
// process, for tests without systemd (the tests under tests/ run the real
// one): it keeps a copy of every fd it is given, and logs every call with
// the size of every journal it holds at that moment, so that a test can
// rebuild what systemd would hand back after a crash at any point.
type fakeFDStore struct {
	mu       sync.Mutex
	calls    []fsCall
	journals map[int]int64 // a journal fd -> its size at the last call
	failNext int           // barriers still to fail
	failAdds int           // adds still to fail
	failJrnl int           // adds of journals still to fail
}

type fsCall struct {
	add, remove string // the name added or removed
	fd          int    // add: the copy
	barrier     bool   // a barrier that systemd answered
	sizes       map[int]int64
	written     int64 // bytes in every journal
}

func (f *fakeFDStore) log(c fsCall) {
	c.sizes = make(map[int]int64, len(f.journals))
	for fd := range f.journals {
		var st unix.Stat_t
		if err := linux.Fstat(fd, &st); err != nil {
			panic(err)
		}
		c.sizes[fd] = st.Size
		c.written += st.Size
	}
	f.calls = append(f.calls, c)
}

func (f *fakeFDStore) Add(name string, fd int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failAdds > 0 || f.failJrnl > 0 && strings.HasPrefix(name, JournalPrefix) {
		// The message was not sent (sendmsg failed): systemd has nothing.
		if strings.HasPrefix(name, JournalPrefix) && f.failJrnl > 0 {
			f.failJrnl--
		} else {
			f.failAdds--
		}
		return errors.New("notify systemd: no buffer space")
	}
	d, err := linux.DupCloexec(fd, 3)
	if err != nil {
		return err
	}
	if strings.HasPrefix(name, JournalPrefix) {
		if f.journals == nil {
			f.journals = make(map[int]int64)
		}
		f.journals[d] = 0
	}
	f.log(fsCall{add: name, fd: d})
	return nil
}

func (f *fakeFDStore) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log(fsCall{remove: name})
	return nil
}

func (f *fakeFDStore) Barrier(time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failNext > 0 {
		// systemd did not answer in time: it may or may not have
		// processed what came before.
		f.failNext--
		f.log(fsCall{})
		return errors.New("systemd did not answer the barrier")
	}
	f.log(fsCall{barrier: true})
	return nil
}

func (f *fakeFDStore) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c.add != "" {
			linux.Close(c.fd)
		}
	}
	f.calls = nil
	return nil
}

// now is the fake's clock: calls so far and bytes in every journal.
func (f *fakeFDStore) now() (int, int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var w int64
	for fd := range f.journals {
		var st unix.Stat_t
		linux.Fstat(fd, &st)
		w += st.Size
	}
	return len(f.calls), w
}

// crash returns what systemd would hand back had the agent died after the
// first n calls, systemd having processed the first k of them, with the
// journals at their sizes at call n but the one that grows until call n+1
// at size l (-1: at call n): fresh copies, which the caller owns.
func (f *fakeFDStore) crash(t *testing.T, k, n int, grows int, l int64) []Stored {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	held := map[string][]int{}
	for _, c := range f.calls[:k] {
		switch {
		case c.add != "":
			held[c.add] = append(held[c.add], c.fd)
		case c.remove != "":
			delete(held, c.remove)
		}
	}
	if metas := len(slices.Collect(func(yield func(string) bool) {
		for name := range held {
			if _, _, ok := parseMetaName(name); ok && !yield(name) {
				return
			}
		}
	})); metas > MetaFDs {
		t.Fatalf("after %d calls the fd store holds %d metadata generations, more than MetaFDs", k, metas)
	}
	var sizes map[int]int64
	if n > 0 {
		sizes = f.calls[n-1].sizes
	}
	var out []Stored
	for name, fds := range held {
		for _, fd := range fds {
			if _, ok := f.journals[fd]; !ok {
				d, err := linux.DupCloexec(fd, 3)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, Stored{name, d})
				continue
			}
			size := sizes[fd]
			if fd == grows && l >= 0 {
				size = l
			}
			out = append(out, Stored{name, copyPrefix(t, fd, size)})
		}
	}
	return out
}

// copyPrefix returns a new memfd holding the first n bytes of fd's file.
func copyPrefix(t *testing.T, fd int, n int64) int {
	t.Helper()
	b := make([]byte, n)
	if _, err := linux.Pread(fd, b, 0); err != nil && n > 0 {
		t.Fatal(err)
	}
	c, err := linux.MemfdCreate("copy")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(c, b); err != nil {
		t.Fatal(err)
	}
	return c
}

// state is what a store and registry hold: every key with its file's
// inode, and the registrations.
func state(st *store.Store, reg *registry.Registry) string {
	var keys []string
	st.ReadLocked(func(_ uint64, entries iter.Seq[*store.Entry], _ []store.Revoked) {
		for e := range entries {
			_, ino, _ := linux.FileID(e.FD())
			keys = append(keys, fmt.Sprintf("%s:%s=%d", e.Owner(), e.Name(), ino))
		}
	})
	slices.Sort(keys)
	for _, c := range reg.All() {
		keys = append(keys, "ctr:"+c.ID)
	}
	return strings.Join(keys, " ")
}

// The journal under every crash: a stream of publishes, replaces, revokes,
// registrations, barriers systemd does not answer, messages that cannot be
// sent and compactions goes
// through the mirror as the agent drives it; then, for every point of the
// stream (between any two calls to the fd store, systemd having processed
// any prefix of them its barriers allow, the journal cut at any of a few
// points of the record being written), what systemd would hand back is
// restored, and must be exactly the state after the last change
// acknowledged before that point, or after a change under way then: never
// a lost acknowledged change, a revoked entry back, or another file under
// a name. (A publish that was not acknowledged may have been stored
// meanwhile, as with any unacknowledged request.)
func TestMirrorCrashAnywhere(t *testing.T) {
	defer func(n int64) { minCompact = n }(minCompact)
	minCompact = 2 << 10 // a compaction every few changes
	cg := cgroups{"/svc": 1, "/c1": 2, "/c2": 3}
	fx := newFixture(t, cg)
	fs := &fakeFDStore{}
	m := NewMirror(fs, fx.log, fx.st, fx.reg, -1)
	defer m.Close()
	limits := &store.Limits{Max: 1000, PerUID: 1000, PinnedPerUID: 1000, Node: noLimits}
	rng := rand.New(rand.NewPCG(7, 8))

	// step is one change as the agent makes it, bracketed by the fake's
	// clock, and the state after it.
	type step struct {
		what         string
		startN, ackN int
		startW, ackW int64
		state        string
		mid          string // a publish not acknowledged: the state while it was in the store
		acknowledged bool
	}
	steps := []step{{what: "start", state: state(fx.st, fx.reg)}}
	names := []string{"a", "b", "c", "d", "e"}
	var mid string
	publish := func(name string, replace bool) (string, bool) {
		fd, err := linux.MemfdCreate(name)
		if err != nil {
			t.Fatal(err)
		}
		sp := store.Spec{Owner: "x.service", Name: name, Pinned: true, Kind: "memfd", Cgroup: "/svc", OwnerCgroup: "/svc", Published: time.Now()}
		sp.Dev, sp.Ino, _ = linux.FileID(fd)
		// Records of every size: compactions at different points.
		for range rng.IntN(4) {
			sp.Allow = append(sp.Allow, policy.Pattern("p"+strings.Repeat("x", rng.IntN(200))+".service"))
		}
		e := store.NewEntry(&sp, fd)
		if err := fx.st.Publish(e, 0, replace, func(*store.Entry) error { return nil }, limits); err != nil {
			return "publish refused: " + err.Error(), false
		}
		mid = state(fx.st, fx.reg)
		if err := m.Durable(e.ID()); err != nil {
			fx.st.Unpublish(e) // as the agent does (conn.go)
			m.Sync()
			return "publish " + name + " not acknowledged", false
		}
		return "publish " + name, true
	}
	for range 400 {
		var s step
		mid = ""
		s.startN, s.startW = fs.now()
		switch rng.IntN(16) {
		case 0:
			fs.mu.Lock()
			fs.failNext = 1
			fs.mu.Unlock()
		case 1:
			fs.mu.Lock()
			fs.failAdds = 1
			fs.mu.Unlock()
		case 2:
			fs.mu.Lock()
			fs.failJrnl = 1 // whenever the next compaction comes
			fs.mu.Unlock()
		}
		name := names[rng.IntN(len(names))]
		switch r := rng.IntN(10); {
		case r < 5:
			s.what, s.acknowledged = publish(name, true)
		case r < 6:
			s.what, s.acknowledged = publish(name, false)
		case r < 8:
			id, err := fx.st.Revoke("x.service", name, func(*store.Entry) error { return nil }, false)
			if err == nil {
				s.what, s.acknowledged = "revoke "+name, m.Durable(id) == nil
			} else {
				s.what = "revoke of nothing"
			}
		case r < 9:
			p := []string{"/c1", "/c2"}[rng.IntN(2)]
			err := fx.reg.Add(registry.New("ctr"+p[1:], "", p, 0))
			s.what, s.acknowledged = "register "+p, err == nil && m.Sync() == nil
		default:
			p := []string{"/c1", "/c2"}[rng.IntN(2)]
			fx.reg.Emptied(p, 1<<62)
			s.what, s.acknowledged = "unregister "+p, m.Sync() == nil
		}
		fs.mu.Lock()
		fs.failNext, fs.failAdds = 0, 0
		fs.mu.Unlock()
		s.ackN, s.ackW = fs.now()
		s.state = state(fx.st, fx.reg)
		if !s.acknowledged {
			s.mid = mid
		}
		steps = append(steps, s)
	}
	fs.mu.Lock()
	fs.log(fsCall{}) // the journals as the stream left them
	fs.mu.Unlock()
	n, _ := fs.now()
	compactions := 0
	for _, c := range fs.calls {
		if strings.HasPrefix(c.add, JournalPrefix) {
			compactions++
		}
	}
	t.Logf("%d steps, %d calls to the fd store, %d journal generations", len(steps)-1, n, compactions)
	if compactions < 10 {
		t.Fatalf("only %d journal generations: the test does not reach compaction", compactions)
	}

	before := func(an int, aw int64, bn int, bw int64) bool { return an < bn || an == bn && aw < bw }
	crashes := 0
	for c := 0; c <= n; c++ {
		// The journal that grows between call c-1 and call c, and how.
		grows, from, to := -1, int64(0), int64(0)
		if c > 0 && c < n {
			for fd, s1 := range fs.calls[c].sizes {
				if s0, held := fs.calls[c-1].sizes[fd]; held && s1 != s0 {
					grows, from, to = fd, s0, s1
				}
			}
		}
		cuts := []int64{-1}
		if grows >= 0 {
			cuts = []int64{from, from + 1, from + recHeaderLen, (from + to) / 2, to - 1, to}
		}
		// Systemd has processed at least everything before its last
		// answered barrier.
		lb := 0
		for i := c - 1; i >= 0; i-- {
			if fs.calls[i].barrier {
				lb = i + 1
				break
			}
		}
		for _, l := range cuts {
			// The point in time: c calls made, the journals at l.
			tn, tw := c, int64(0)
			if c > 0 {
				tw = fs.calls[c-1].written
			}
			if l >= 0 {
				tw += l - from
			}
			lo, hi := 0, 0
			for i, s := range steps {
				if i > 0 && s.acknowledged && before(s.ackN, s.ackW, tn, tw) {
					lo = i
				}
				if i > 0 && !before(s.startN, s.startW, tn, tw) {
					break
				}
				hi = i
			}
			if lo > hi {
				hi = lo
			}
			for k := lb; k <= c; k++ {
				to := &fixture{st: store.New(cg, nil), reg: registry.NewRegistry(cg, cg), log: fx.log}
				Restore(to.log, fs.crash(t, k, c, grows, l), to.st, to.reg, nil)
				got := state(to.st, to.reg)
				to.close()
				crashes++
				ok := false
				for i := lo; i <= hi; i++ {
					// A publish not acknowledged may have been
					// stored: the client learns it may or may not
					// have taken effect.
					ok = ok || got == steps[i].state || i > lo && steps[i].mid != "" && got == steps[i].mid
				}
				if !ok {
					var around []string
					for i := max(lo-2, 0); i <= min(hi+2, len(steps)-1); i++ {
						around = append(around, fmt.Sprintf("  %d %s (ack %v): %s", i, steps[i].what, steps[i].acknowledged, steps[i].state))
					}
					t.Fatalf("crash after %d calls (systemd processed %d), journal cut at %d: restored\n  %s\nwant the state after one of steps %d..%d:\n%s",
						c, k, l, got, lo, hi, strings.Join(around, "\n"))
				}
			}
		}
	}
	t.Logf("%d crash points restored", crashes)
}
