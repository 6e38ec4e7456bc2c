package persist

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// Stored is one fd handed to the agent at start (systemd's fd store, or a
// hand-off), by name. Several may have the same name.
type Stored struct {
	Name string
	FD   int
}

// Restore rebuilds st and reg from the fds passed at start (owned by
// Restore from here on) and returns how many entries it restored. m, if
// not nil, is the mirror of the fd store the fds came from. Bad state is
// reported and skipped, never fatal: an fd without metadata is closed and
// dropped from the fd store, metadata without its fd is skipped, corrupt
// metadata (a journal that is not exactly what the agent writes, an
// unsealed snapshot) is discarded whole (its entries' fds then have no
// metadata; see chooseMeta), an invalid record is skipped, and so is an fd that is not the
// file its record describes (device, inode, kind), which is never handed
// out. Unpinned entries whose owner cgroup has emptied, and expired ones,
// are dropped; so are registrations whose cgroup is gone.
func Restore(log *slog.Logger, stored []Stored, st *store.Store, reg *registry.Registry, m *Mirror) int {
	closeDrop := func(name string, fd int) {
		linux.Close(fd)
		if m != nil {
			m.fs.Remove(name)
		}
	}
	byName := make(map[string][]int, len(stored))
	for _, s := range stored {
		byName[s.Name] = append(byName[s.Name], s.FD)
	}
	meta, metaGen := chooseMeta(log, byName)
	for name, fds := range byName {
		if !strings.HasPrefix(name, MetaPrefix) && !strings.HasPrefix(name, JournalPrefix) {
			continue
		}
		for _, fd := range fds {
			if name == meta.name {
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
	for _, c := range meta.Containers {
		if fds, ok := byName[c.FD]; ok && c.FD != "" {
			for _, fd := range fds {
				linux.Close(fd) // an older agent's pidfd: the cgroup decides now
			}
			delete(byName, c.FD)
		}
		if err := ValidContainer(&c); err != nil {
			log.Warn("stored container registration is invalid; skipped", "id", c.ID, "err", err)
			continue
		}
		ct := registry.New(c.ID, c.Name, c.Cgroup, c.CgroupID)
		if c.Pod != "" {
			ct = registry.NewInPod(c.ID, c.Pod, c.Name, c.Cgroup, c.CgroupID)
		}
		if err := reg.Add(ct); err != nil {
			log.Info("stored container registration not restored", "id", c.ID, "identity", c.Identity, "reason", err)
			continue
		}
		ctrs++
	}
	if ctrs > 0 {
		log.Info("restored container registrations", "containers", ctrs)
	}
	if m != nil {
		m.restored(metaGen)
	}
	restored := 0
	nextID := meta.NextID
	// An entry before the grants made of it, a grant before those
	// delegated from it.
	slices.SortStableFunc(meta.Entries, func(a, b Record) int {
		return strings.Count(a.Name, string(proto.GrantSep)) - strings.Count(b.Name, string(proto.GrantSep))
	})
	for i := range meta.Entries {
		r := &meta.Entries[i]
		if err := ValidRecord(r); err != nil {
			log.Warn("stored entry is invalid; skipped", "id", r.ID, "err", err)
			continue
		}
		n, _ := store.ParseEntryID(r.ID)
		nextID = max(nextID, n+1)
		fds, ok := byName[r.ID]
		if !ok {
			log.Warn("stored entry has no fd; skipped", "id", r.ID, "owner", r.Owner, "name", r.Name)
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
				log.Error("stored fd is not the file its record describes; closed, never handed out", "id", r.ID, "owner", r.Owner, "name", r.Name, "err", err)
				linux.Close(f)
			}
		}
		if fd < 0 {
			if m != nil {
				m.fs.Remove(r.ID)
			}
			continue
		}
		sp := store.Spec{
			Owner: r.Owner, Name: r.Name, Pinned: r.Pinned, Allow: r.Allow, Kind: kind, Cgroup: r.Cgroup, OwnerCgroup: r.OwnerCg,
			UID: r.UID, Acct: r.Acct, Limited: !r.Exempt, Published: r.Published, Expires: r.Expires, Dev: r.Dev, Ino: r.Ino,
			Restrict: proto.Restrict(r.Restrict), Grantee: r.Grantee, GranteeUID: r.GranteeUID,
		}
		if r.Acct == 0 {
			sp.Acct = r.UID // recorded by an older agent
		}
		if err := st.Restore(store.NewEntry(&sp, fd), r.ID); err != nil {
			log.Info("stored entry not restored", "owner", r.Owner, "name", r.Name, "reason", err)
			continue
		}
		restored++
	}
	for name, fds := range byName {
		if strings.HasPrefix(name, store.IDPrefix) || strings.HasPrefix(name, CtrPrefix) {
			log.Warn("stored fd has no metadata; dropped", "name", name, "fds", len(fds))
		} else {
			log.Warn("unexpected fd passed at start; closed", "name", name, "fds", len(fds))
		}
		for _, fd := range fds {
			closeDrop(name, fd)
		}
	}
	st.SetNext(nextID)
	st.SetLedger(append(ledgerOf(meta.Revoked), st.Ledger()...)) // those enforced while restoring last
	if m != nil {
		m.Sync()
	}
	return restored
}

// sameFile checks that fd is the file r describes and returns its kind: the
// same device and inode, and the same kind, except that an O_PATH fd an
// older agent recorded under its file's kind is now "path" (which only
// restricts it further).
func sameFile(fd int, r *Record) (string, error) {
	kind, dev, ino, err := linux.DescribeFD(fd)
	if err != nil {
		return "", err
	}
	if dev != r.Dev || ino != r.Ino {
		return "", fmt.Errorf("device %d inode %d, recorded %d and %d", dev, ino, r.Dev, r.Ino)
	}
	if kind != r.Kind && kind != "path" {
		return "", fmt.Errorf("a %s, recorded as a %s", kind, r.Kind)
	}
	return kind, nil
}

// chosen is the metadata Restore goes by, and the name it came under.
type chosen struct {
	*Meta
	name string
}

// chooseMeta reads the metadata of the highest generation among the names
// passed (a journal, or the sealed snapshot of a hand-off or of an older
// agent) and returns it with its generation: the highest complete
// generation wins, and a compaction stores its generation whole before the
// older one goes. Anything wrong with it (two fds or two kinds under one
// generation, a journal that is not exactly what the agent writes, an
// unsealed or corrupt snapshot) discards all metadata: an older generation
// might name an entry revoked since, whose fd systemd still holds. An
// incomplete last journal record (a crash while it was written) is
// dropped: it was never acknowledged.
func chooseMeta(log *slog.Logger, byName map[string][]int) (chosen, uint64) {
	var names []string
	var gen uint64
	var journal bool
	older := 0
	for name := range byName {
		g, j, ok := parseMetaName(name)
		if ok && len(names) > 0 && g != gen {
			older++
		}
		switch {
		case !ok:
		case len(names) == 0 || g > gen:
			names, gen, journal = []string{name}, g, j
		case g == gen:
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return chosen{Meta: &Meta{}}, 0
	}
	if older > 0 {
		// A compaction was under way: its new generation is complete.
		log.Info("older metadata generations dropped", "name", names[0], "older", older)
	}
	var meta *Meta
	var info JournalInfo
	var err error
	switch fds := byName[names[0]]; {
	case len(names) > 1:
		err = fmt.Errorf("generation %d is stored as %q", gen, names)
	case len(fds) != 1:
		err = fmt.Errorf("%d fds carry the name", len(fds))
	case journal:
		meta, info, err = readJournal(fds[0], gen)
	default:
		meta, err = readMeta(fds[0])
	}
	if err != nil {
		log.Error("discarding the stored metadata: no entry or container registration is restored", "name", names[0], "generation", gen, "err", err)
		return chosen{Meta: &Meta{}, name: names[0]}, gen
	}
	if info.Torn > 0 {
		log.Warn("the metadata journal ends in an incomplete record (the agent stopped while writing it); its changes were never acknowledged and are dropped", "name", names[0], "bytes", info.Torn)
	}
	log.Debug("stored metadata", "name", names[0], "entries", len(meta.Entries), "containers", len(meta.Containers), "journal_records", info.Batches)
	return chosen{Meta: meta, name: names[0]}, gen
}
