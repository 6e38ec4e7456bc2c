package persist

import (
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/internal/fdstore"
)

// MetaFDs is how many fds of systemd's fd store the metadata takes: a new
// generation is stored before the old one is removed.
const MetaFDs = 2

// maxFailed bounds the failures remembered for requests that never ask.
const maxFailed = 1024

// Mirror keeps systemd's fd store in step with the store: it is the
// store's Observer.
type Mirror struct {
	fs   *fdstore.Store
	log  *slog.Logger
	st   *store.Store
	reg  *registry.Registry
	room int // entries the fd store keeps (FileDescriptorStoreMax less the metadata); -1: unknown

	mu    sync.Mutex // serializes metadata uploads; taken before the store's lock
	gen   uint64
	stale []uint64 // metadata generations to drop after the next confirmed one

	// fmu guards failed and removals; a leaf lock, taken under the store's.
	fmu      sync.Mutex
	failed   map[string]error // entry ids whose Add systemd refused, until the request that made the change takes the error
	removals []string         // entry ids to drop once metadata without them is confirmed
}

// NewMirror returns the mirror of st and reg in fs, which it owns from now
// on, and makes itself st's Observer. room is how many entry fds fs keeps
// (-1: unknown).
func NewMirror(fs *fdstore.Store, log *slog.Logger, st *store.Store, reg *registry.Registry, room int) *Mirror {
	m := &Mirror{fs: fs, log: log, st: st, reg: reg, room: room}
	st.SetObserver(m)
	return m
}

// Added stores e's fd under its id; called under the store's lock, so that
// adds and removes reach systemd in the store's order.
func (m *Mirror) Added(e *store.Entry) {
	if err := m.fs.Add(e.ID(), e.FD()); err != nil {
		m.log.Error("cannot keep an entry in systemd's fd store; it will not survive a restart", "owner", e.Owner, "name", e.Name, "err", err)
		m.fail(e.ID(), fmt.Errorf("store %s:%s in systemd's fd store: %w", e.Owner, e.Name, err))
	}
}

// Removed notes that e's fd must leave the fd store; called under the
// store's lock. It leaves only after metadata that no longer names it is
// confirmed (see upload): removed before, a crash in between would find
// the old metadata naming an fd that is gone, and lose an entry whose
// replacement was not yet recorded.
func (m *Mirror) Removed(e *store.Entry) {
	m.fmu.Lock()
	m.removals = append(m.removals, e.ID())
	m.fmu.Unlock()
}

// Pending is how many fds systemd still holds for entries removed since
// the last confirmed upload.
func (m *Mirror) Pending() int {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	return len(m.removals)
}

// Room is how many entry fds the fd store keeps, -1 if unknown.
func (m *Mirror) Room() int { return m.room }

// Dropped brings systemd up to date after entries went without a request.
func (m *Mirror) Dropped() { m.Sync() }

// Sync uploads the metadata of the store and registry as they are now,
// removes the previous upload, and waits until systemd has taken it all
// (BARRIER), so that a change acknowledged afterwards survives a crash. An
// error means that changes since the last confirmed sync may not survive
// a restart; it is logged too.
func (m *Mirror) Sync() error {
	m.mu.Lock()
	err := m.upload()
	m.mu.Unlock()
	if err != nil {
		m.log.Error("cannot update the stored metadata", "err", err)
	}
	return err
}

// Durable syncs and reports whether the change to the entry with id
// reached systemd's fd store and was confirmed.
func (m *Mirror) Durable(id string) error {
	err := m.Sync()
	return errors.Join(m.takeFailure(id), err)
}

func (m *Mirror) fail(id string, err error) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	if m.failed == nil || len(m.failed) >= maxFailed {
		m.failed = make(map[string]error)
	}
	m.failed[id] = err
}

// takeFailure returns and forgets the failure of entry id.
func (m *Mirror) takeFailure(id string) error {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	err := m.failed[id]
	delete(m.failed, id)
	return err
}

// upload stores the current metadata and waits for systemd to confirm,
// under m.mu.
//
// Order, for crash safety: the new generation is stored and confirmed
// (BARRIER) first; only then are the previous generations and the fds of
// entries removed before the snapshot dropped from the fd store.
func (m *Mirror) upload() (err error) {
	var meta *Meta
	var removals []string
	m.st.ReadLocked(func(next uint64, entries iter.Seq[*store.Entry]) {
		meta = snapshot(next, entries)
		m.fmu.Lock()
		removals = m.removals
		m.removals = nil
		m.fmu.Unlock()
	})
	defer func() {
		if err != nil { // not confirmed: drop them after a later upload
			m.fmu.Lock()
			m.removals = append(removals, m.removals...)
			m.fmu.Unlock()
		}
	}()
	meta.Containers = containers(m.reg)
	fd, err := encode(meta)
	if err != nil {
		return err
	}
	defer fd.Close() // systemd keeps its own copy
	if m.gen > 0 {
		m.stale = append(m.stale, m.gen)
	}
	m.gen++
	if err := m.fs.Add(MetaPrefix+strconv.FormatUint(m.gen, 10), fd.Int()); err != nil {
		return err
	}
	if err := m.fs.Barrier(5 * time.Second); err != nil {
		return err
	}
	for _, g := range m.stale {
		if err := m.fs.Remove(MetaPrefix + strconv.FormatUint(g, 10)); err != nil {
			m.log.Warn("cannot remove old metadata from systemd's fd store; dropped at the next start", "generation", g, "err", err)
		}
	}
	m.stale = m.stale[:0]
	for _, id := range removals {
		if err := m.fs.Remove(id); err != nil {
			m.log.Warn("cannot remove a removed entry's fd from systemd's fd store; dropped at the next start", "name", id, "err", err)
		}
	}
	return nil
}

// generation is the metadata generation last stored.
func (m *Mirror) generation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

// Close closes the connection to systemd.
func (m *Mirror) Close() error { return m.fs.Close() }
