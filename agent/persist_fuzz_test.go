package agent

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/linux"
)

// FuzzRestore feeds arbitrary metadata to Restore, beside an fd named e-1
// and one named c-1: it must return (not loop, not panic), adopt an fd
// only for a valid record describing it, and leave every other fd closed.
func FuzzRestore(f *testing.F) {
	for _, seed := range []string{
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"x","owner_cgroup":"/"}]}`,
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"","owner_cgroup":"/"}]}`,
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"a/b","owner_cgroup":"/"}]}`,
		`{"next_id":7,"entries":[{"id":"e-1","owner":"cgroup:/","name":"b","pinned":true,"kind":"memfd","cgroup":"/","owner_cgroup":"/"}]}`,
		`{"entries":[],"containers":[{"fd":"c-1","id":"x","identity":"container:x","cgroup":"/x"}]}`,
		`{"entries":[{"id":"e-1","owner":"cgroup:/","name":"b","allow":["[bad"],"kind":"file","cgroup":"/","owner_cgroup":"/"}]}`,
		`not json`,
	} {
		f.Add([]byte(seed))
	}
	if unix.Geteuid() != 0 {
		f.Fatal("FuzzRestore needs root (the agent's cgroup resolver): run it as root")
	}
	s, err := New(policy.Default(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.store.close(); s.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		mfd, err := sealedMemfd("fuzz", b)
		if err != nil {
			t.Fatal(err)
		}
		efd, err := linux.MemfdCreate("e")
		if err != nil {
			t.Fatal(err)
		}
		cfd, err := linux.MemfdCreate("c")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan int, 1)
		go func() { done <- s.Restore([]Stored{{"capd-meta-1", mfd}, {"e-1", efd}, {"c-1", cfd}}) }()
		select {
		case n := <-done:
			if n > 1 {
				t.Fatalf("restored %d entries from one fd", n)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Restore did not return within 5s for %q", b)
		}
		// Forget what was restored, for the next input.
		var dead []*entry
		s.store.mu.Lock()
		for _, e := range s.store.entries {
			dead = append(dead, s.store.removeLocked(e))
		}
		s.store.mu.Unlock()
		s.store.releaseAll(dead)
		s.reg.close()
	})
}
