package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

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

	mu  sync.Mutex // serializes metadata uploads; taken before the store's lock
	gen uint64
	st  *store
	reg *registry
	// fmu guards failed and removals. failed: the stored-fd names whose Add systemd
	// refused, until the request that made the change takes the error. A
	// leaf lock, taken under the store's.
	fmu      sync.Mutex
	failed   map[string]error
	removals []string // stored-fd names to drop once metadata without them is confirmed
	stale    []uint64 // metadata generations to drop after the next confirmed one (under mu)
	room     int      // entries the fd store keeps (FileDescriptorStoreMax less the metadata); -1: unknown
}

// meta is the stored metadata: the entries and the registered containers,
// and the next stored-fd id, so that names are never reused.
type meta struct {
	NextID     uint64      `json:"next_id,omitempty"`
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
	Acct      uint32           `json:"acct_uid,omitempty"` // the uid its per-uid limits count against
	Exempt    bool             `json:"exempt,omitempty"`   // published by a host administrator: no per-uid limits
}

// added stores e's fd under e.sid; called under the store lock, so that
// adds and removes reach systemd in the store's order.
func (p *persist) added(e *entry) {
	if err := p.fs.Add(e.sid, e.fd); err != nil {
		p.log.Error("cannot keep an entry in systemd's fd store; it will not survive a restart", "owner", e.owner, "name", e.name, "err", err)
		p.fail(e.sid, fmt.Errorf("store %s:%s in systemd's fd store: %w", e.owner, e.name, err))
	}
}

// removed drops e's fd from the fd store; called under the store lock.
//
// The fd leaves systemd's fd store only after metadata that no longer
// names it is confirmed (see upload): removed before, a crash in between
// would find the old metadata naming an fd that is gone, and lose an
// entry whose replacement was not yet recorded.
func (p *persist) removed(e *entry) {
	p.fmu.Lock()
	p.removals = append(p.removals, e.sid)
	p.fmu.Unlock()
}

// pendingRemovals is how many fds systemd still holds for entries removed
// since the last confirmed upload. Called under the store's lock.
func (p *persist) pendingRemovals() int {
	p.fmu.Lock()
	defer p.fmu.Unlock()
	return len(p.removals)
}

// sync uploads the metadata of the store as it is now, removes the
// previous upload, and waits until systemd has taken it all (BARRIER), so
// that a publish acknowledged afterwards survives a crash.
func (p *persist) sync() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.upload()
}

// maxFailed bounds the failures remembered for requests that never ask.
const maxFailed = 1024

func (p *persist) fail(sid string, err error) {
	p.fmu.Lock()
	defer p.fmu.Unlock()
	if p.failed == nil || len(p.failed) >= maxFailed {
		p.failed = make(map[string]error)
	}
	p.failed[sid] = err
}

// takeFailure returns and forgets the failure of stored-fd name sid.
func (p *persist) takeFailure(sid string) error {
	p.fmu.Lock()
	defer p.fmu.Unlock()
	err := p.failed[sid]
	delete(p.failed, sid)
	return err
}

// upload stores the current metadata and waits for systemd to confirm.
//
// Order, for crash safety: the new generation is stored and confirmed
// (BARRIER) first; only then are the previous generations and the fds of
// entries removed before the snapshot dropped from the fd store. A crash at
// any point leaves the highest complete generation naming fds that systemd
// still holds; fds no generation names are dropped at the next start.
func (p *persist) upload() (err error) {
	p.st.mu.RLock()
	m := meta{NextID: p.st.seq + 1, Entries: records(p.st.entries)}
	p.fmu.Lock()
	removals := p.removals
	p.removals = nil
	p.fmu.Unlock()
	p.st.mu.RUnlock()
	defer func() {
		if err != nil { // not confirmed: drop them after a later upload
			p.fmu.Lock()
			p.removals = append(removals, p.removals...)
			p.fmu.Unlock()
		}
	}()
	m.Containers = p.reg.records()
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	fd, err := sealedMemfd("capd-meta", b)
	if err != nil {
		return err
	}
	defer linux.Close(fd)
	if p.gen > 0 {
		p.stale = append(p.stale, p.gen)
	}
	p.gen++
	if err := p.fs.Add(metaPrefix+strconv.FormatUint(p.gen, 10), fd); err != nil {
		return err
	}
	if err := p.fs.Barrier(5 * time.Second); err != nil {
		return err
	}
	for _, g := range p.stale {
		if err := p.fs.Remove(metaPrefix + strconv.FormatUint(g, 10)); err != nil {
			p.log.Warn("cannot remove old metadata from systemd's fd store; dropped at the next start", "generation", g, "err", err)
		}
	}
	p.stale = p.stale[:0]
	for _, sid := range removals {
		if err := p.fs.Remove(sid); err != nil {
			p.log.Warn("cannot remove a removed entry's fd from systemd's fd store; dropped at the next start", "name", sid, "err", err)
		}
	}
	return nil
}

// records describes entries, sorted by id.
func records(entries map[key]*entry) []record {
	recs := make([]record, 0, len(entries))
	for _, e := range entries {
		recs = append(recs, record{
			ID: e.sid, Owner: e.owner, Name: e.name, Pinned: e.pinned, Allow: e.allow, Kind: e.kind,
			Cgroup: e.cgroup, OwnerCg: e.ownerCg, UID: e.uid, Published: e.published, Expires: e.expires,
			Dev: e.dev, Ino: e.ino, Acct: e.acct, Exempt: !e.limited,
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
		n, err := linux.Write(fd, b[off:])
		if err != nil {
			linux.Close(fd)
			return -1, err
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
	seals, err := linux.Seals(fd)
	if err != nil {
		return nil, fmt.Errorf("not a memfd: %w", err)
	}
	const want = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if seals&want != want {
		return nil, fmt.Errorf("memfd is not sealed (seals %#x)", seals)
	}
	var st unix.Stat_t
	if err := linux.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Size > maxMeta {
		return nil, fmt.Errorf("metadata of %d bytes is larger than %d", st.Size, maxMeta)
	}
	b := make([]byte, st.Size)
	if _, err := linux.Pread(fd, b, 0); err != nil {
		return nil, err
	}
	return decodeMeta(b)
}

// decodeMeta parses metadata. Records are validated one by one at
// Restore (validRecord, validContainer), so that one bad record costs only
// itself.
func decodeMeta(b []byte) (*meta, error) {
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("corrupt metadata: %w", err)
	}
	return &m, nil
}

// validRecord checks a stored entry field by field: stored state is input
// like any other, and a cgroup path that is not clean and absolute would
// never reach the root when walked up.
func validRecord(r *record) error {
	if _, err := storedID(r.ID); err != nil {
		return err
	}
	switch {
	case r.Owner == "" || len(r.Owner) > proto.MaxIdentity || strings.ContainsFunc(r.Owner, unicode.IsControl):
		return fmt.Errorf("owner %q is not an identity", r.Owner)
	case proto.ValidName(r.Name) != nil:
		return proto.ValidName(r.Name)
	case !validCgroupPath(r.Cgroup) || !validCgroupPath(r.OwnerCg):
		return fmt.Errorf("cgroup %q or owner cgroup %q is not a clean absolute path", r.Cgroup, r.OwnerCg)
	case !within(r.Cgroup, r.OwnerCg):
		return fmt.Errorf("cgroup %s is not within its owner cgroup %s", r.Cgroup, r.OwnerCg)
	case r.Kind == "" || len(r.Kind) > 64 || strings.ContainsFunc(r.Kind, unicode.IsControl):
		return fmt.Errorf("kind %q", r.Kind)
	case len(r.Allow) > proto.MaxAllow:
		return fmt.Errorf("%d allow patterns, more than %d", len(r.Allow), proto.MaxAllow)
	}
	for _, a := range r.Allow {
		if err := policy.ValidPattern(string(a)); err != nil {
			return err
		}
	}
	return nil
}

// storedName is the name of entry e's fd in systemd's fd store: "e-N", N
// unique for the store's whole life, then the owner and name as far as
// FDNAME allows ([A-Za-z0-9_.-], 255 bytes; other bytes become '_'), so
// that an operator recognises them ("systemd-analyze fdstore capd").
func storedName(n uint64, owner, name string) string {
	b := []byte(entryPrefix + strconv.FormatUint(n, 10) + "." + owner + "." + name)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			b[i] = '_'
		}
	}
	return string(b[:min(len(b), 255)])
}

// storedID returns the N of a stored-fd name "e-N" or "e-N.ANYTHING".
func storedID(sid string) (uint64, error) {
	n, ok := strings.CutPrefix(sid, entryPrefix)
	if i := strings.IndexByte(n, '.'); i >= 0 {
		n = n[:i]
	}
	v, err := strconv.ParseUint(n, 10, 64)
	if !ok || err != nil || n == "" || n[0] == '0' || len(sid) > 255 {
		return 0, fmt.Errorf("stored fd name %q is not %sN[.OWNER.NAME]", sid, entryPrefix)
	}
	return v, nil
}

// Stored is one fd handed to the agent at start (systemd's fd store, or a
// hand-off), by name. Several may have the same name.
type Stored struct {
	Name string
	FD   int
}

// Restore rebuilds the store and registry from the fds passed at start
// (owned by Restore from here on) and returns how many entries it
// restored. Bad state is reported and skipped, never fatal: an fd without
// metadata is closed and dropped from the fd store, metadata without its fd
// is skipped, a corrupt or unsealed metadata memfd is discarded (its
// entries' fds then have no metadata), an invalid record is skipped, and so
// is an fd that is not the file its record describes (device, inode, kind),
// which is never handed out. Unpinned entries whose owner cgroup has
// emptied, and expired ones, are dropped.
func (s *Server) Restore(stored []Stored) int {
	p := s.store.persist
	closeDrop := func(name string, fd int) {
		linux.Close(fd)
		if p != nil {
			p.fs.Remove(name)
		}
	}
	byName := make(map[string][]int, len(stored))
	for _, st := range stored {
		byName[st.Name] = append(byName[st.Name], st.FD)
	}
	var metaName string
	var metaGen uint64
	for name := range byName {
		if g, ok := strings.CutPrefix(name, metaPrefix); ok {
			if n, err := strconv.ParseUint(g, 10, 64); err == nil && (metaName == "" || n > metaGen) {
				metaName, metaGen = name, n
			}
		}
	}
	m := &meta{}
	if metaName != "" {
		var err error
		fds := byName[metaName]
		if len(fds) != 1 {
			err = fmt.Errorf("%d fds carry the name", len(fds))
		} else {
			m, err = readMeta(fds[0])
		}
		if err != nil {
			s.log.Error("discarding the stored metadata", "name", metaName, "err", err)
			m = &meta{}
		}
	}
	for name, fds := range byName {
		if !strings.HasPrefix(name, metaPrefix) {
			continue
		}
		for _, fd := range fds {
			if name == metaName {
				// Kept in the fd store until a newer one replaces it.
				linux.Close(fd)
			} else {
				closeDrop(name, fd)
			}
		}
		delete(byName, name)
	}
	// Registrations first: whether a container's unpinned entries stay
	// depends on its cgroup, which they follow.
	ctrs := 0
	for _, c := range m.Containers {
		if fds, ok := byName[c.FD]; ok && c.FD != "" {
			for _, fd := range fds {
				linux.Close(fd) // an older agent's pidfd: the cgroup decides now
			}
			delete(byName, c.FD)
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
	if p != nil {
		p.gen = metaGen
	}
	restored := 0
	nextID := m.NextID
	now := time.Now()
	for i := range m.Entries {
		r := &m.Entries[i]
		if err := validRecord(r); err != nil {
			s.log.Warn("stored entry is invalid; skipped", "id", r.ID, "err", err)
			continue
		}
		n, _ := storedID(r.ID)
		nextID = max(nextID, n+1)
		fds, ok := byName[r.ID]
		if !ok {
			s.log.Warn("stored entry has no fd; skipped", "id", r.ID, "owner", r.Owner, "name", r.Name)
			continue
		}
		delete(byName, r.ID)
		// The fd must be the file the record describes; of several fds
		// under one name, the one that is.
		fd, kind := -1, ""
		for _, f := range fds {
			if k, err := sameFile(f, r); fd < 0 && err == nil {
				fd, kind = f, k
			} else {
				if err == nil {
					err = errors.New("another fd under the same name is the file")
				}
				s.log.Error("stored fd is not the file its record describes; closed, never handed out", "id", r.ID, "owner", r.Owner, "name", r.Name, "err", err)
				linux.Close(f)
			}
		}
		if fd < 0 {
			if p != nil {
				p.fs.Remove(r.ID)
			}
			continue
		}
		e := newEntry(r.Owner, r.Name, fd)
		e.sid, e.pinned, e.allow, e.kind, e.cgroup, e.ownerCg = r.ID, r.Pinned, r.Allow, kind, r.Cgroup, r.OwnerCg
		e.uid, e.acct, e.limited, e.published, e.expires, e.dev, e.ino = r.UID, r.Acct, !r.Exempt, r.Published, r.Expires, r.Dev, r.Ino
		if r.Acct == 0 {
			e.acct = r.UID // recorded by an older agent
		}
		if err := s.store.restore(e, now); err != nil {
			s.log.Info("stored entry not restored", "owner", r.Owner, "name", r.Name, "reason", err)
			continue
		}
		restored++
	}
	for name, fds := range byName {
		if strings.HasPrefix(name, entryPrefix) || strings.HasPrefix(name, ctrPrefix) {
			s.log.Warn("stored fd has no metadata; dropped", "name", name, "fds", len(fds))
		} else {
			s.log.Warn("unexpected fd passed at start; closed", "name", name, "fds", len(fds))
		}
		for _, fd := range fds {
			closeDrop(name, fd)
		}
	}
	s.store.mu.Lock()
	s.store.seq = max(s.store.seq, nextID-1)
	s.store.mu.Unlock()
	if p != nil {
		if err := p.sync(); err != nil {
			s.log.Error("cannot update the stored metadata", "err", err)
		}
	}
	return restored
}

// sameFile checks that fd is the file r describes and returns its kind: the
// same device and inode, and the same kind, except that an O_PATH fd an
// older agent recorded under its file's kind is now "path" (which only
// restricts it further).
func sameFile(fd int, r *record) (string, error) {
	dev, ino, err := linux.FileID(fd)
	if err != nil {
		return "", err
	}
	if dev != r.Dev || ino != r.Ino {
		return "", fmt.Errorf("device %d inode %d, recorded %d and %d", dev, ino, r.Dev, r.Ino)
	}
	kind := linux.FdKind(fd)
	if kind != r.Kind && kind != "path" {
		return "", fmt.Errorf("a %s, recorded as a %s", kind, r.Kind)
	}
	return kind, nil
}

// restore inserts an entry systemd kept across a restart. It takes
// ownership of e's fd. The fd is already in the fd store under e.sid.
func (s *store) restore(e *entry, now time.Time) error {
	var dead []*entry
	defer func() { s.releaseAll(dead) }()
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
	s.insertLockedNoPersist(e)
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
	for _, e := range st.entries {
		e.refs.Add(1) // never released: exec closes the agent's copies
		names, fds = append(names, e.sid), append(fds, e.fd)
	}
	m := meta{NextID: st.seq + 1, Entries: records(st.entries)}
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
