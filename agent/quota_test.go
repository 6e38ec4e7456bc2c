package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
)

func loadConfig(t *testing.T, body string) *policy.Config {
	t.Helper()
	f := filepath.Join(t.TempDir(), "capd.toml")
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Load(f, false)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func memFile(t *testing.T) *os.File {
	t.Helper()
	f := os.NewFile(uintptr(memfd(t)), "memfd")
	t.Cleanup(func() { f.Close() })
	return f
}

// Publishers racing for the last slots of a quota (here the test process's
// own cgroup, the root on this host) never exceed it, pinned or not; the
// agent runs in this process, so -race watches the store.
func TestConcurrentPublishersNeverExceedQuota(t *testing.T) {
	const maxEntries, maxPinned, workers, each = 40, 15, 8, 20
	s := startServer(t, loadConfig(t, fmt.Sprintf("[[quota]]\ncgroup = \"/\"\nmax_entries = %d\nmax_pinned = %d\n", maxEntries, maxPinned)))
	f := memFile(t)
	var ok, pinnedOK, refused atomic.Int32
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := client.Dial(s.path)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for i := 0; i < each; i++ {
				pin := i%2 == 0
				err := c.Publish(fmt.Sprintf("w%d-%d", w, i), f, &client.PublishOptions{Pin: pin})
				switch {
				case err == nil && pin:
					pinnedOK.Add(1)
					ok.Add(1)
				case err == nil:
					ok.Add(1)
				case errors.Is(err, client.ErrQuotaExceeded):
					refused.Add(1)
				default:
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if ok.Load() != maxEntries || pinnedOK.Load() > maxPinned || s.Entries() != maxEntries {
		t.Fatalf("%d published (%d pinned), %d refused, store holds %d; limits %d entries, %d pinned",
			ok.Load(), pinnedOK.Load(), refused.Load(), s.Entries(), maxEntries, maxPinned)
	}
	if pinnedOK.Load() != maxPinned {
		t.Fatalf("%d pins accepted; with %d pin attempts the %d slots should all be taken", pinnedOK.Load(), workers*each/2, maxPinned)
	}
	st := s.status(t)
	if len(st.Nodes) != 1 || st.Nodes[0].Cgroup != "/" || st.Nodes[0].Entries != maxEntries || st.Nodes[0].Pinned != maxPinned {
		t.Fatalf("status nodes %+v", st.Nodes)
	}
}

func (s *testServer) status(t *testing.T) *client.Status {
	t.Helper()
	c, err := client.Dial(s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Lowering a limit below usage by reload keeps every entry and refuses new
// ones; raising it again admits them.
func TestReloadBelowUsageKeepsEntries(t *testing.T) {
	s := startServer(t, loadConfig(t, "[[quota]]\ncgroup = \"/\"\nmax_entries = 5\n"))
	c, err := client.Dial(s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f := memFile(t)
	for i := 0; i < 5; i++ {
		if err := c.Publish(fmt.Sprint("e", i), f, nil); err != nil {
			t.Fatal(err)
		}
	}
	s.Reload(loadConfig(t, "[[quota]]\ncgroup = \"/\"\nmax_entries = 2\n"))
	if s.Entries() != 5 {
		t.Fatalf("reload left %d of 5 entries", s.Entries())
	}
	for i := 0; i < 5; i++ {
		fd, err := c.AcquireFD(s.identity(t), fmt.Sprint("e", i))
		if err != nil {
			t.Fatal(err)
		}
		os.NewFile(uintptr(fd), "").Close()
	}
	err = c.Publish("more", f, nil)
	if !errors.Is(err, client.ErrQuotaExceeded) {
		t.Fatalf("publish over a lowered limit: %v", err)
	}
	st := s.status(t)
	if n := st.Nodes[0]; *n.MaxEntries != 2 || n.Entries != 5 || n.EntriesSource != "quota cgroup=/" {
		t.Fatalf("status after reload: %+v", n)
	}
	s.Reload(policy.Default())
	if err := c.Publish("more", f, nil); err != nil {
		t.Fatal(err)
	}
}
