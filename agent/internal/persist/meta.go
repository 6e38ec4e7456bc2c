package persist

import (
	"encoding/json"
	"fmt"
	"iter"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

const (
	// CtrPrefix names a container's init pidfd, in a hand-off from an
	// older agent only.
	CtrPrefix = "c-"
	// MetaPrefix names a sealed metadata snapshot: what a hand-off passes,
	// and what an older agent stored in the fd store.
	MetaPrefix = "capd-meta-"
	maxMeta    = 64 << 20
)

// AgentPrefix names fds the agent keeps for itself beside its entries and
// metadata (its origin mount namespace in a hand-off, the programs and
// maps of kernel-enforced revocation): Restore leaves them to the agent.
const AgentPrefix = "capd-"

// IsStored reports whether name is one the agent gives the fds it keeps
// (entries, metadata, an older agent's container pidfds, its own), as
// opposed to a socket systemd passes.
func IsStored(name string) bool {
	for _, p := range []string{store.IDPrefix, CtrPrefix, MetaPrefix, JournalPrefix, AgentPrefix} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Meta is the stored metadata: the entries and the registered containers,
// and the next entry number, so that ids are never reused.
type Meta struct {
	NextID     uint64      `json:"next_id,omitempty"`
	Entries    []Record    `json:"entries"`
	Containers []CtrRecord `json:"containers,omitempty"`
	// Revoked is the ledger of enforced revocations (store.Revoked),
	// oldest first.
	Revoked []RevRecord `json:"revoked,omitempty"`
}

// RevRecord is an enforced revocation: its entry or grant, and when.
type RevRecord struct {
	ID    string    `json:"id"`
	Owner string    `json:"owner"`
	Name  string    `json:"name"`
	At    time.Time `json:"at"`
}

func revRecordOf(e *store.Entry, at time.Time) *RevRecord {
	return &RevRecord{ID: e.ID(), Owner: e.Owner(), Name: e.Name(), At: at}
}

func revRecords(l []store.Revoked) []RevRecord {
	var out []RevRecord
	for _, r := range l {
		out = append(out, RevRecord{ID: r.ID, Owner: r.Key.Owner, Name: r.Key.Name, At: r.At})
	}
	return out
}

// ledgerOf turns stored revocations back into the store's ledger; a
// record whose id is not an entry id is dropped.
func ledgerOf(rs []RevRecord) []store.Revoked {
	var out []store.Revoked
	for _, r := range rs {
		n, err := store.ParseEntryID(r.ID)
		if err != nil || len(r.Owner) > proto.MaxIdentity || len(r.Name) > 4*proto.MaxName {
			continue
		}
		out = append(out, store.Revoked{ID: r.ID, Seq: n, Key: store.Key{Owner: r.Owner, Name: r.Name}, At: r.At})
	}
	return out
}

// CtrRecord is a registered container. A registration is restored only if
// its cgroup still exists as the same directory (CgroupID, its inode) and
// still has processes.
type CtrRecord struct {
	FD       string   `json:"fd,omitempty"` // an older agent's hand-off: its init's pidfd, unused
	ID       string   `json:"id"`
	Name     string   `json:"name,omitempty"`
	Pod      string   `json:"pod,omitempty"` // "NAMESPACE/POD" of a pod's container
	Identity string   `json:"identity"`
	Aliases  []string `json:"aliases,omitempty"`
	Cgroup   string   `json:"cgroup"`
	CgroupID uint64   `json:"cgroup_id,omitempty"`
}

// Record is one entry's metadata.
type Record struct {
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
	// Restrict: an entry's per-consumer restrictions, a grant's own
	// (proto.Restrict bits).
	Restrict uint32 `json:"restrict,omitempty"`
	// Grantee and GranteeUID: whom a grant (Name NAME#gN...) was made for.
	Grantee    string `json:"grantee,omitempty"`
	GranteeUID uint32 `json:"grantee_uid,omitempty"`
}

// snapshot describes the store's entries (called under its lock).
func snapshot(next uint64, entries iter.Seq[*store.Entry]) *Meta {
	m := &Meta{NextID: next}
	for e := range entries {
		m.Entries = append(m.Entries, recordOf(e))
	}
	if m.Entries == nil {
		m.Entries = []Record{}
	}
	sort.Slice(m.Entries, func(i, j int) bool { return m.Entries[i].ID < m.Entries[j].ID })
	return m
}

// recordOf describes e (called under the store's lock).
func recordOf(e *store.Entry) Record {
	dev, ino := e.File()
	r := Record{
		ID: e.ID(), Owner: e.Owner(), Name: e.Name(), Pinned: e.Pinned(), Allow: e.Allow(), Kind: e.Kind(),
		Cgroup: e.Cgroup(), OwnerCg: e.OwnerCgroup(), UID: e.UID(), Published: e.Published(), Expires: e.Expires(),
		Dev: dev, Ino: ino, Acct: e.Acct(), Exempt: !e.Limited(), Restrict: uint32(e.Restrict()),
	}
	if e.IsGrant() {
		r.Grantee, r.GranteeUID = e.Grantee()
	}
	return r
}

// containers describes the registrations, sorted by id.
func containers(reg *registry.Registry) []CtrRecord {
	all := reg.All()
	out := make([]CtrRecord, 0, len(all))
	for _, c := range all {
		out = append(out, CtrRecord{ID: c.ID, Name: c.Name, Pod: c.Pod, Identity: c.Identity, Aliases: c.Aliases, Cgroup: c.Cgroup, CgroupID: c.CgroupID})
	}
	return out
}

// encode renders m into a sealed memfd, which the caller owns.
func encode(m *Meta) (*linux.FD, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	fd, err := linux.SealedMemfd("capd-meta", b)
	if err != nil {
		return nil, err
	}
	return linux.NewFD(fd), nil
}

// readMeta reads a metadata memfd, which must be sealed against writes.
func readMeta(fd int) (*Meta, error) {
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
	return Decode(b)
}

// Decode parses metadata. Records are validated one by one at Restore
// (ValidRecord, ValidContainer), so that one bad record costs only itself.
func Decode(b []byte) (*Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("corrupt metadata: %w", err)
	}
	return &m, nil
}

// ValidRecord checks a stored entry field by field: a cgroup path that is
// not clean and absolute would never reach the root when walked up, and an
// id that does not name the record's owner and name (as EntryID made it;
// a bare "e-N" from an older agent) could give one owner's fd to another.
func ValidRecord(r *Record) error {
	n, err := store.ParseEntryID(r.ID)
	if err != nil {
		return err
	}
	switch {
	case r.ID != store.IDPrefix+strconv.FormatUint(n, 10) && r.ID != store.EntryID(n, r.Owner, r.Name):
		return fmt.Errorf("entry id %q does not name owner %q and name %q", r.ID, r.Owner, r.Name)
	case r.Owner == "" || len(r.Owner) > proto.MaxIdentity || strings.ContainsFunc(r.Owner, unicode.IsControl):
		return fmt.Errorf("owner %q is not an identity", r.Owner)
	case proto.ValidName(baseName(r.Name)) != nil:
		return proto.ValidName(baseName(r.Name))
	case proto.Restrict(r.Restrict)&^(proto.RestrictAll|proto.RestrictRevoked) != 0:
		return fmt.Errorf("restrictions %#x", r.Restrict)
	case (r.Grantee != "") != strings.ContainsRune(r.Name, proto.GrantSep):
		return fmt.Errorf("entry %q with grantee %q: a grant's name is NAME#gN, and only a grant has a grantee", r.Name, r.Grantee)
	case len(r.Grantee) > proto.MaxIdentity || strings.ContainsFunc(r.Grantee, unicode.IsControl):
		return fmt.Errorf("grantee %q is not an identity", r.Grantee)
	case !validCgroupPath(r.Cgroup) || !validCgroupPath(r.OwnerCg):
		return fmt.Errorf("cgroup %q or owner cgroup %q is not a clean absolute path", r.Cgroup, r.OwnerCg)
	case r.Grantee == "" && !cgroup.Within(r.Cgroup, r.OwnerCg):
		// (A grant counts against its consumer's cgroup, anywhere.)
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

// baseName is the entry name a stored name begins with, after checking
// the grant ids that may follow it ("NAME#g7#g9"); "" if one is not.
func baseName(name string) string {
	parts := strings.Split(name, string(proto.GrantSep))
	for _, id := range parts[1:] {
		if proto.ValidGrantID(id) != nil {
			return ""
		}
	}
	return parts[0]
}

// ValidContainer checks a stored registration field by field.
func ValidContainer(c *CtrRecord) error {
	switch {
	case proto.ValidContainerName(c.ID) != nil:
		return proto.ValidContainerName(c.ID)
	case c.Name != "" && proto.ValidContainerName(c.Name) != nil:
		return proto.ValidContainerName(c.Name)
	case !validCgroupPath(c.Cgroup) || c.Cgroup == "/":
		return fmt.Errorf("cgroup %q is not a cgroup below the root", c.Cgroup)
	case c.CgroupID == 0:
		// Without the inode, a cgroup made again at the path since
		// would pass for the registered one.
		return fmt.Errorf("registration of %s records no cgroup inode", c.Cgroup)
	case c.Pod != "" && (proto.ValidPod(c.Pod) != nil || c.Name == ""):
		return fmt.Errorf("pod %q of container %q: want NAMESPACE/POD and a container name", c.Pod, c.Name)
	}
	want := registry.New(c.ID, c.Name, c.Cgroup, 0)
	if c.Pod != "" {
		want = registry.NewInPod(c.ID, c.Pod, c.Name, c.Cgroup, 0)
	}
	if c.Identity != want.Identity || !slices.Equal(c.Aliases, want.Aliases) {
		return fmt.Errorf("identity %q and aliases %q do not follow from id %q and name %q", c.Identity, c.Aliases, c.ID, c.Name)
	}
	return nil
}

// validCgroupPath reports whether p is a clean absolute cgroup path.
func validCgroupPath(p string) bool {
	return strings.HasPrefix(p, "/") && path.Clean(p) == p
}
