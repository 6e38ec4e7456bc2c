package persist

import (
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"sync"
	"time"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/internal/activation"
)

// MetaFDs is how many fds of systemd's fd store the metadata takes: a new
// journal generation is stored before the old one is removed.
const MetaFDs = 2

// maxFailed bounds the failures remembered for requests that never ask.
const maxFailed = 1024

// barrierTimeout is how long systemd may take to confirm.
const barrierTimeout = 5 * time.Second

// FDStore is systemd's fd store of the service (fdstore.Store): Add sends
// a copy of fd under name, Remove drops every fd called name, Barrier
// returns once systemd processed everything sent before it.
type FDStore interface {
	Add(name string, fd int) error
	Remove(name string) error
	Barrier(timeout time.Duration) error
	Close() error
}

// Mirror keeps systemd's fd store in step with the store: it is the
// store's Observer. Entries' fds go to the fd store as they are added;
// the metadata of every change goes to the journal (see journal.go) when
// the request that made it asks for durability (Sync, Durable), one record
// for all the changes since the last one.
type Mirror struct {
	fs   FDStore
	log  *slog.Logger
	st   *store.Store
	reg  *registry.Registry
	room int // entries the fd store keeps (FileDescriptorStoreMax less the metadata); -1: unknown

	// Guarded by mu, which serializes flushes; taken before the store's
	// lock.
	mu      sync.Mutex
	cur     *journal // the generation appended to; nil: none yet
	gen     uint64   // the last generation stored, or read at Restore
	compact bool     // the next flush must compact: cur misses changes
	stale   []string // metadata names to drop from the fd store once cur is confirmed
	covered int      // removals that cur no longer names: their fds go once it is confirmed
	ctrs    uint64   // the registry's Changes that cur holds

	// fmu guards failed, ops and removals; a leaf lock, taken under the
	// store's.
	fmu      sync.Mutex
	failed   map[string]error // entry ids whose Add systemd refused, until the request that made the change takes the error
	ops      []op             // changes not yet in the journal, in the store's order
	removals []string         // ids of removed entries whose fds systemd still holds, in the order of their removal
}

// NewMirror returns the mirror of st and reg in fs, which it owns from now
// on, and makes itself st's Observer. room is how many entry fds fs keeps
// (-1: unknown).
func NewMirror(fs FDStore, log *slog.Logger, st *store.Store, reg *registry.Registry, room int) *Mirror {
	m := &Mirror{fs: fs, log: log, st: st, reg: reg, room: room}
	st.SetObserver(m)
	return m
}

// Added stores e's fd under its id and queues its record; called under the
// store's lock, so that adds and removes reach systemd and the journal in
// the store's order.
func (m *Mirror) Added(e *store.Entry) {
	id := e.ID()
	if err := m.fs.Add(id, e.FD()); err != nil {
		m.log.Error("cannot keep an entry in systemd's fd store; it will not survive a restart", "owner", e.Owner(), "name", e.Name(), "err", err)
		m.fail(id, fmt.Errorf("store %s:%s in systemd's fd store: %w", e.Owner(), e.Name(), err))
	}
	r := recordOf(e)
	m.fmu.Lock()
	m.ops = append(m.ops, op{Put: &r})
	m.fmu.Unlock()
}

// Removed queues the removal of e; called under the store's lock. Its fd
// leaves the fd store only after a journal that no longer names it is
// confirmed (see flush): removed before, a crash in between would find the
// journal naming an fd that is gone, and lose an entry whose replacement
// was not yet recorded.
func (m *Mirror) Removed(e *store.Entry) {
	o := op{Del: e.ID()}
	if e.Enforced() {
		o.Revoked = revRecordOf(e, time.Now())
	}
	m.fmu.Lock()
	m.ops = append(m.ops, o)
	m.removals = append(m.removals, e.ID())
	m.fmu.Unlock()
}

// Pending is how many fds systemd still holds for removed entries: until
// the FDSTOREREMOVE is sent, they count against its room.
func (m *Mirror) Pending() int {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	return len(m.removals)
}

// Room is how many entry fds the fd store keeps, -1 if unknown.
func (m *Mirror) Room() int { return m.room }

// Dropped brings systemd up to date after entries went without a request.
func (m *Mirror) Dropped() { m.Sync() }

// Sync writes the changes to the store and registry so far to the journal
// and waits until systemd confirmed every fd they need (BARRIER), so that a
// change acknowledged afterwards survives a crash. An error means that
// changes since the last confirmed sync may not survive a restart; it is
// logged too.
func (m *Mirror) Sync() error {
	m.mu.Lock()
	err := m.flush()
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

// flush appends the queued changes to the journal as one record, under
// m.mu, or compacts when the journal asks for it.
//
// Order, for crash safety: an entry's fd is sent to systemd (Added) before
// its record is queued, and confirmed (BARRIER) before the record is
// appended, so that a record never names an fd systemd might not hold (a
// replace would lose both files); the fds of removed entries leave the fd
// store only after the record of their removal is in a confirmed journal.
// A record in the journal is durable once written: systemd holds the same
// memfd.
func (m *Mirror) flush() error {
	if m.cur != nil && !m.cur.confirmed {
		if err := m.fs.Barrier(barrierTimeout); err != nil {
			return err
		}
		m.cur.confirmed = true
		m.release()
	}
	if m.cur == nil || m.compact || m.cur.broken {
		return m.compactNow()
	}
	m.fmu.Lock()
	ops, covered := m.ops, len(m.removals)
	m.ops = nil
	m.fmu.Unlock()
	bt := batch{Ops: ops}
	ctrs := m.reg.Changes()
	if ctrs != m.ctrs {
		cs := containers(m.reg)
		bt.Containers = &cs
	}
	if len(bt.Ops) == 0 && bt.Containers == nil {
		return nil
	}
	rec, err := frame(kindBatch, &bt)
	if err != nil {
		m.requeue(ops)
		return err
	}
	if m.cur.full(len(rec)) {
		return m.compactNow() // its snapshot holds ops too
	}
	for _, o := range ops {
		if o.Put != nil {
			if err := m.fs.Barrier(barrierTimeout); err != nil {
				m.requeue(ops)
				return err
			}
			break
		}
	}
	if err := m.cur.write(rec); err != nil {
		m.log.Error("cannot append to the metadata journal; writing a new generation", "generation", m.cur.gen, "err", err)
		return m.compactNow()
	}
	m.ctrs, m.covered = ctrs, covered
	m.release()
	return nil
}

// requeue puts ops that did not reach the journal back in front.
func (m *Mirror) requeue(ops []op) {
	m.fmu.Lock()
	m.ops = append(ops, m.ops...)
	m.fmu.Unlock()
}

// compactNow writes a new journal generation, a snapshot of the store and
// registry, stores it and waits for systemd to confirm it; then the old
// generation and the fds of entries removed before the snapshot leave the
// fd store. Under m.mu.
//
// Once the new generation is sent, every later change goes to it alone:
// if systemd has not confirmed it yet, the next flush waits for that
// before anything else (and before another compaction, so that the fd
// store never holds more than MetaFDs generations).
func (m *Mirror) compactNow() error {
	m.compact = true // until a new generation is sent
	var meta *Meta
	var covered int
	m.st.ReadLocked(func(next uint64, entries iter.Seq[*store.Entry], ledger []store.Revoked) {
		meta = snapshot(next, entries)
		meta.Revoked = revRecords(ledger)
		m.fmu.Lock()
		m.ops = nil // the snapshot holds them
		covered = len(m.removals)
		m.fmu.Unlock()
	})
	ctrs := m.reg.Changes()
	meta.Containers = containers(m.reg)
	j, err := newJournal(m.gen+1, meta)
	if err != nil {
		return err
	}
	if err := m.fs.Add(j.name(), j.fd.Int()); err != nil {
		// Not sent: systemd does not hold it; the next flush tries again
		// under the same generation.
		j.fd.Close()
		return err
	}
	m.gen = j.gen
	if m.cur != nil {
		m.stale = append(m.stale, m.cur.name())
		m.cur.fd.Close() // systemd keeps its copy until it is dropped
	}
	m.cur, m.compact, m.ctrs, m.covered = j, false, ctrs, covered
	if err := m.fs.Barrier(barrierTimeout); err != nil {
		return err
	}
	j.confirmed = true
	m.release()
	return nil
}

// release drops from the fd store the metadata generations cur replaced
// and the fds of removed entries it no longer names; cur is confirmed.
// Under m.mu.
func (m *Mirror) release() {
	for _, name := range m.stale {
		if err := m.fs.Remove(name); err != nil {
			m.log.Warn("cannot remove old metadata from systemd's fd store; dropped at the next start", "name", name, "err", err)
		}
	}
	m.stale = m.stale[:0]
	if m.covered == 0 {
		return
	}
	m.fmu.Lock()
	ids := m.removals[:m.covered:m.covered]
	m.fmu.Unlock()
	for _, id := range ids {
		if err := m.fs.Remove(id); err != nil {
			m.log.Warn("cannot remove a removed entry's fd from systemd's fd store; dropped at the next start", "name", id, "err", err)
		}
	}
	m.fmu.Lock()
	m.removals = append([]string(nil), m.removals[m.covered:]...)
	m.fmu.Unlock()
	m.covered = 0
}

// generation is the metadata generation last stored.
func (m *Mirror) generation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

// restored sets what Restore found: the generation read and the names it
// may have been stored under (a hand-off passes the journal's generation
// as a snapshot; a compaction may have stored one more), to drop once a
// newer generation is confirmed.
func (m *Mirror) restored(gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen = gen
	for _, g := range []uint64{gen - 1, gen} {
		if g > 0 && g <= gen {
			m.stale = append(m.stale, journalName(g), fmt.Sprintf("%s%d", MetaPrefix, g))
		}
	}
}

// Close closes the journal and the connection to systemd.
func (m *Mirror) Close() error {
	m.mu.Lock()
	if m.cur != nil {
		m.cur.fd.Close()
		m.cur = nil
	}
	m.mu.Unlock()
	return m.fs.Close()
}

// Keep stores the agent's own fds (the BPF LSM programs' links and maps)
// in systemd's fd store under their names, waits until systemd confirmed
// them, and leaves that much less room for entries. Called at start,
// before the store is used.
func (m *Mirror) Keep(files []activation.File) error {
	for _, f := range files {
		if err := m.fs.Add(f.Name, f.FD); err != nil {
			return fmt.Errorf("store %s: %w", f.Name, err)
		}
	}
	m.Reserve(len(files))
	return m.fs.Barrier(barrierTimeout)
}

// Reserve leaves n fewer fds of systemd's fd store for entries: fds of the
// agent's own that systemd already keeps (adopted at start). Called at
// start, before the store is used.
func (m *Mirror) Reserve(n int) {
	if m.room >= 0 {
		m.room = max(m.room-n, 0)
	}
}

// Forget drops the agent's own fds called names from systemd's fd store.
func (m *Mirror) Forget(names []string) {
	for _, n := range names {
		if err := m.fs.Remove(n); err != nil {
			m.log.Warn("cannot drop an fd from systemd's fd store", "name", n, "err", err)
		}
	}
}
