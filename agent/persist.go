package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/fdstore"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// Under systemd the agent keeps every entry's fd in its own fd store
// (named "e-N") and the metadata of the entries and of the registered
// containers in a sealed memfd stored beside them ("capd-meta-G", G
// growing with every change). systemd hands them all back at the next
// start, after a crash too, and the agent rebuilds its store and registry
// from them.
const (
	entryPrefix = "e-"
	ctrPrefix   = "c-" // a container's init pidfd, in a hand-off from an older agent only
	metaPrefix  = "capd-meta-"
	maxMeta     = 64 << 20
)

// persist mirrors the store into systemd's fd store.
type persist struct {
	fs  *fdstore.Store
	log *slog.Logger
	seq atomic.Uint64 // last entry id handed out

	mu  sync.Mutex // serializes metadata uploads
	gen uint64
	st  *store
	reg *registry
}

// meta is the stored metadata: the entries and the registered containers.
type meta struct {
	Entries    []record    `json:"entries"`
	Containers []ctrRecord `json:"containers,omitempty"`
}

// ctrRecord is a registered container. A registration is restored only if
// its cgroup still exists as the same directory (CgroupID, its inode) and
// still has processes.
type ctrRecord struct {
	FD       string   `json:"fd,omitempty"` // an older agent's hand-off: its init's pidfd, unused
	ID       string   `json:"id"`
	Name     string   `json:"name,omitempty"`
	Identity string   `json:"identity"`
	Aliases  []string `json:"aliases,omitempty"`
	Cgroup   string   `json:"cgroup"`
	CgroupID uint64   `json:"cgroup_id,omitempty"`
}

// record is one entry's metadata.
type record struct {
	ID        string           `json:"id"`
	Owner     string           `json:"owner"`
	Name      string           `json:"name"`
	Pinned    bool             `json:"pinned,omitempty"`
	Allow     []policy.Pattern `json:"allow,omitempty"`
	Kind      string           `json:"kind"`
	Cgroup    string           `json:"cgroup"`
	OwnerCg   string           `json:"owner_cgroup"`
	UID       uint32           `json:"uid"`
	Published time.Time        `json:"published"`
	Expires   time.Time        `json:"expires,omitzero"`
	Dev       uint64           `json:"dev"`
	Ino       uint64           `json:"ino"`
}

// added stores e's fd; called under the store lock, so that adds and
// removes reach systemd in the store's order.
func (p *persist) added(e *entry) {
	e.sid = entryPrefix + strconv.FormatUint(p.seq.Add(1), 10)
	if err := p.fs.Add(e.sid, e.fd); err != nil {
		p.log.Error("cannot keep an entry in systemd's fd store; it will not survive a restart", "owner", e.owner, "name", e.name, "err", err)
	}
}

// removed drops e's fd from the fd store; called under the store lock.
func (p *persist) removed(e *entry) {
	if err := p.fs.Remove(e.sid); err != nil {
		p.log.Error("cannot remove an entry from systemd's fd store", "owner", e.owner, "name", e.name, "err", err)
	}
}

// sync uploads the metadata of the store as it is now, removes the
// previous upload, and waits until systemd has taken it all (BARRIER), so
// that a publish acknowledged afterwards survives a crash.
func (p *persist) sync() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.mu.RLock()
	recs := records(p.st.entries)
	p.st.mu.RUnlock()
	b, err := json.Marshal(meta{Entries: recs, Containers: p.reg.records()})
	if err != nil {
		return err
	}
	fd, err := sealedMemfd("capd-meta", b)
	if err != nil {
		return err
	}
	defer linux.Close(fd)
	p.gen++
	if err := p.fs.Add(metaPrefix+strconv.FormatUint(p.gen, 10), fd); err != nil {
		return err
	}
	if p.gen > 1 {
		if err := p.fs.Remove(metaPrefix + strconv.FormatUint(p.gen-1, 10)); err != nil {
			return err
		}
	}
	return p.fs.Barrier(5 * time.Second)
}

// records describes entries, sorted by id.
func records(entries map[key]*entry) []record {
	recs := make([]record, 0, len(entries))
	for _, e := range entries {
		recs = append(recs, record{
			ID: e.sid, Owner: e.owner, Name: e.name, Pinned: e.pinned, Allow: e.allow, Kind: e.kind,
			Cgroup: e.cgroup, OwnerCg: e.ownerCg, UID: e.uid, Published: e.published, Expires: e.expires,
			Dev: e.dev, Ino: e.ino,
		})
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	return recs
}

func sealedMemfd(name string, b []byte) (int, error) {
	fd, err := linux.MemfdCreate(name)
	if err != nil {
		return -1, err
	}
	for off := 0; off < len(b); {
		n, err := unix.Write(fd, b[off:])
		if err != nil {
			linux.Close(fd)
			return -1, os.NewSyscallError("write", err)
		}
		off += n
	}
	if err := linux.SealAll(fd); err != nil {
		linux.Close(fd)
		return -1, err
	}
	return fd, nil
}

// readMeta reads a metadata memfd, which must be sealed against writes.
func readMeta(fd int) (*meta, error) {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("not a memfd: %w", os.NewSyscallError("fcntl F_GET_SEALS", err))
	}
	const want = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if seals&want != want {
		return nil, fmt.Errorf("memfd is not sealed (seals %#x)", seals)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, os.NewSyscallError("fstat", err)
	}
	if st.Size > maxMeta {
		return nil, fmt.Errorf("metadata of %d bytes is larger than %d", st.Size, maxMeta)
	}
	b := make([]byte, st.Size)
	if _, err := unix.Pread(fd, b, 0); err != nil {
		return nil, os.NewSyscallError("pread", err)
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("corrupt metadata: %w", err)
	}
	return &m, nil
}

// Restore rebuilds the store from the fds systemd passed back (name -> fd,
// owned by Restore from here on) and returns how many entries it restored.
// Bad state is reported and skipped, never fatal: an fd without metadata
// is closed and dropped from the fd store, metadata without its fd is
// skipped, a corrupt or unsealed metadata memfd is discarded (its entries'
// fds then have no metadata). Unpinned entries whose owner cgroup has
// emptied, and expired ones, are dropped.
func (s *Server) Restore(fds map[string]int) int {
	p := s.store.persist
	closeDrop := func(name string, fd int) {
		linux.Close(fd)
		if p != nil {
			p.fs.Remove(name)
		}
	}
	var metaName string
	var metaGen uint64
	for name := range fds {
		if g, ok := strings.CutPrefix(name, metaPrefix); ok {
			if n, err := strconv.ParseUint(g, 10, 64); err == nil && (metaName == "" || n > metaGen) {
				metaName, metaGen = name, n
			}
		}
	}
	m := &meta{}
	if metaName != "" {
		var err error
		if m, err = readMeta(fds[metaName]); err != nil {
			s.log.Error("discarding the stored metadata", "name", metaName, "err", err)
			m = &meta{}
		}
	}
	for name, fd := range fds {
		if strings.HasPrefix(name, metaPrefix) {
			if name == metaName {
				// Kept in the fd store until a newer one replaces it.
				linux.Close(fd)
			} else {
				closeDrop(name, fd)
			}
			delete(fds, name)
		}
	}
	// Registrations first: whether a container's unpinned entries stay
	// depends on its cgroup, which they follow.
	ctrs := 0
	for _, c := range m.Containers {
		if fd, ok := fds[c.FD]; ok && c.FD != "" {
			linux.Close(fd) // an older agent's pidfd: the cgroup decides now
			delete(fds, c.FD)
		}
		if err := validContainer(&c); err != nil {
			s.log.Warn("stored container registration is invalid; skipped", "id", c.ID, "err", err)
			continue
		}
		ct := &container{id: c.ID, name: c.Name, identity: c.Identity, aliases: c.Aliases, cgroup: c.Cgroup, cgroupID: c.CgroupID}
		if err := s.reg.add(ct); err != nil {
			s.log.Info("stored container registration not restored", "id", c.ID, "identity", c.Identity, "reason", err)
			continue
		}
		ctrs++
	}
	if ctrs > 0 {
		s.log.Info("restored container registrations", "containers", ctrs)
	}
	recs := m.Entries
	if p != nil {
		p.gen = metaGen
	}
	restored := 0
	var maxID uint64
	now := time.Now()
	for _, r := range recs {
		fd, ok := fds[r.ID]
		if !ok {
			s.log.Warn("stored entry has no fd; skipped", "id", r.ID, "owner", r.Owner, "name", r.Name)
			continue
		}
		delete(fds, r.ID)
		if n, err := strconv.ParseUint(strings.TrimPrefix(r.ID, entryPrefix), 10, 64); err == nil && n > maxID {
			maxID = n
		}
		e := newEntry(r.Owner, r.Name, fd)
		e.sid, e.pinned, e.allow, e.kind, e.cgroup, e.ownerCg = r.ID, r.Pinned, r.Allow, r.Kind, r.Cgroup, r.OwnerCg
		e.uid, e.published, e.expires, e.dev, e.ino = r.UID, r.Published, r.Expires, r.Dev, r.Ino
		if err := s.store.restore(e, now); err != nil {
			s.log.Info("stored entry not restored", "owner", r.Owner, "name", r.Name, "reason", err)
			continue
		}
		restored++
	}
	for name, fd := range fds {
		if strings.HasPrefix(name, entryPrefix) || strings.HasPrefix(name, ctrPrefix) {
			s.log.Warn("stored fd has no metadata; dropped", "name", name)
		} else {
			s.log.Warn("unexpected fd passed at start; closed", "name", name)
		}
		closeDrop(name, fd)
	}
	if p != nil {
		p.seq.Store(max(p.seq.Load(), maxID))
		if err := p.sync(); err != nil {
			s.log.Error("cannot update the stored metadata", "err", err)
		}
	}
	return restored
}

// restore inserts an entry systemd kept across a restart. It takes
// ownership of e's fd. The fd is already in the fd store under e.sid.
func (s *store) restore(e *entry, now time.Time) error {
	var dead []*entry
	defer func() { releaseAll(dead) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	drop := func(err error) error {
		dead = append(dead, e)
		if s.persist != nil {
			s.persist.removed(e)
		}
		return err
	}
	switch {
	case s.entries[e.key] != nil:
		return drop(errors.New("duplicate"))
	case !e.expires.IsZero() && !e.expires.After(now):
		return drop(errors.New("expired"))
	}
	if e.watched() {
		epoch, populated, _, err := s.watch.Add(e.ownerCg)
		if err != nil {
			return drop(err)
		}
		if !populated {
			s.watch.Remove(e.ownerCg)
			return drop(fmt.Errorf("owner cgroup %s has no processes left", e.ownerCg))
		}
		e.epoch = epoch
	}
	sid := e.sid
	s.insertLockedNoPersist(e)
	e.sid = sid
	return nil
}

// Handoff prepares a graceful restart without losing anything: it freezes
// the store (expiry and drops stop; connections must be drained first) and
// returns fds and their names in the socket-activation protocol's form:
// every entry's fd ("e-N") and the metadata of entries and container
// registrations ("capd-meta-G", a sealed memfd), for a new agent process
// to Restore. The fds stay open until the process execs; if it
// does not, it must exit.
func (s *Server) Handoff() (names []string, fds []int, err error) {
	st := s.store
	st.mu.Lock()
	st.closed = true // no more publishes, no expiry, no drops
	st.timer.Stop()
	var gen uint64 = 1
	if st.persist != nil {
		gen = st.persist.gen
	}
	var n uint64
	for _, e := range st.entries {
		e.refs.Add(1) // never released: exec closes the agent's copies
		if e.sid == "" {
			n++
			e.sid = entryPrefix + strconv.FormatUint(n, 10)
		}
		names, fds = append(names, e.sid), append(fds, e.fd)
	}
	m := meta{Entries: records(st.entries)}
	st.mu.Unlock()

	m.Containers = s.reg.records()

	b, err := json.Marshal(m)
	if err != nil {
		return nil, nil, err
	}
	mfd, err := sealedMemfd("capd-meta", b)
	if err != nil {
		return nil, nil, err
	}
	names, fds = append(names, metaPrefix+strconv.FormatUint(gen, 10)), append(fds, mfd)
	return names, fds, nil
}

// validContainer checks a stored registration field by field: stored state
// is input like any other.
func validContainer(c *ctrRecord) error {
	switch {
	case proto.ValidContainerName(c.ID) != nil:
		return proto.ValidContainerName(c.ID)
	case c.Name != "" && proto.ValidContainerName(c.Name) != nil:
		return proto.ValidContainerName(c.Name)
	case !validCgroupPath(c.Cgroup) || c.Cgroup == "/":
		return fmt.Errorf("cgroup %q is not a cgroup below the root", c.Cgroup)
	}
	want := "container:" + c.ID
	var aliases []string
	if c.Name != "" {
		want, aliases = "container:"+c.Name, []string{"container:" + c.ID}
	}
	if c.Identity != want || !slices.Equal(c.Aliases, aliases) {
		return fmt.Errorf("identity %q and aliases %q do not follow from id %q and name %q", c.Identity, c.Aliases, c.ID, c.Name)
	}
	return nil
}

// validCgroupPath reports whether p is a clean absolute cgroup path.
func validCgroupPath(p string) bool {
	return strings.HasPrefix(p, "/") && path.Clean(p) == p
}
