package persist

import (
	"slices"
	"strconv"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
)

// Handoff prepares a graceful restart without losing anything: it freezes
// st (expiry and drops stop; connections must be drained first) and
// returns fds and their names in the socket-activation protocol's form:
// every entry's fd (its id) and the metadata of entries and container
// registrations ("capd-meta-G", a sealed snapshot, G the journal's
// generation: older agents read it too), for a new agent process to
// Restore. The entries' fds stay open, owned by the frozen store,
// until the process execs; the metadata memfd is the caller's. If it
// fails, it has released what it took; the process must then stop.
func Handoff(st *store.Store, reg *registry.Registry, m *Mirror) (names []string, fds []int, err error) {
	next, entries := st.Freeze()
	gen := uint64(1)
	if m != nil {
		gen = max(m.generation(), 1)
	}
	meta := snapshot(next, slices.Values(entries))
	meta.Revoked = revRecords(st.Ledger())
	meta.Containers = containers(reg)
	mfd, err := encode(meta)
	if err != nil {
		st.ReleaseAll(entries)
		return nil, nil, err
	}
	for _, e := range entries {
		// The reference Freeze took is never released: exec closes the
		// agent's copies.
		names, fds = append(names, e.ID()), append(fds, e.FD())
	}
	return append(names, MetaPrefix+strconv.FormatUint(gen, 10)), append(fds, mfd.Release()), nil
}
