package persist

import (
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/linux"
)

// FuzzRestore feeds arbitrary metadata to Restore, beside an fd named e-1
// and one named c-1: it must return (not loop, not panic), adopt an fd
// only for a valid record describing it, and leave every other fd closed
// (TestMain's leak check).
func FuzzRestore(f *testing.F) {
	for _, seed := range []string{
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"x","owner_cgroup":"/"}]}`,
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"","owner_cgroup":"/"}]}`,
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"a/b","owner_cgroup":"/"}]}`,
		`{"next_id":7,"entries":[{"id":"e-1","owner":"cgroup:/","name":"b","pinned":true,"kind":"memfd","cgroup":"/","owner_cgroup":"/"}]}`,
		`{"entries":[{"id":"e-1","owner":"x.service","name":"b","kind":"memfd","cgroup":"/svc/a","owner_cgroup":"/svc"}]}`,
		`{"entries":[],"containers":[{"fd":"c-1","id":"x","identity":"container:x","cgroup":"/ctr"}]}`,
		`{"entries":[{"id":"e-1","owner":"cgroup:/","name":"b","allow":["[bad"],"kind":"file","cgroup":"/","owner_cgroup":"/"}]}`,
		`not json`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fx := newFixture(t, cgroups{"/svc": 1, "/ctr": 2})
		mfd, err := linux.SealedMemfd("fuzz", b)
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
		go func() {
			done <- Restore(fx.log, []Stored{{"capd-meta-1", mfd}, {"e-1", efd}, {"c-1", cfd}}, fx.st, fx.reg, nil)
		}()
		select {
		case n := <-done:
			if n > 1 {
				t.Fatalf("restored %d entries from one fd", n)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Restore did not return within 5s for %q", b)
		}
	})
}
