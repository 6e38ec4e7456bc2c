package persist

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/internal/linux"
)

// The metadata journal: one memfd per generation, stored in the fd store as
// "capd-journal-G". It begins with a header and a snapshot of the whole
// metadata; every change after that is one record appended in place (the
// memfd systemd holds is the very file the agent writes, so an append needs
// no message to systemd). A compaction writes a new generation, a fresh
// snapshot, and drops the old one once systemd confirmed the new one.
//
//	header  "CAPDJRN1", generation (8 bytes, little endian)
//	record  length L (4 bytes LE), CRC-32C of the body (4 bytes LE), body
//	body    kind ('S' snapshot: Meta; 'B' batch: batch), then JSON
//
// The first record is the snapshot, written before the memfd is stored;
// each later one is a batch, the changes of one flush, written by one
// pwrite(2) and complete or not at all: a crash while it is written leaves
// it incomplete (fewer than L bytes after its header), and it is dropped,
// never acknowledged. Anything else that is not exactly what the agent
// writes (a bad header, a complete record whose checksum or kind is wrong,
// a second snapshot, a change that does not follow from the state before
// it) makes the whole generation unusable: a later change that cannot be
// read might be the revoke of an entry that would otherwise come back.
//
// Sealing: the agent writes the journal while it runs, so it is sealed
// only against shrinking (F_SEAL_SHRINK); whoever reads it at start seals
// it against every change first (write, grow, shrink, further seals), so
// that nothing can change what is being validated. Only the agent and
// systemd hold it; another writer would need root (an open of
// /proc/PID/fd/N of either).
const (
	// JournalPrefix names a metadata journal generation.
	JournalPrefix = "capd-journal-"
	journalMagic  = "CAPDJRN1"
	headerLen     = len(journalMagic) + 8
	recHeaderLen  = 8
	// maxJournal bounds a journal's size; compaction keeps it far below.
	maxJournal = 2 * maxMeta
	// compactFactor: the tail may grow to this many times the snapshot
	// before a compaction rewrites it, so that a compaction's O(entries)
	// cost is spread over as many changes.
	compactFactor = 2
)

const (
	kindSnapshot = 'S'
	kindBatch    = 'B'
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// minCompact is the journal tail (bytes past the snapshot) that never
// causes a compaction, however small the snapshot (a variable for tests).
var minCompact int64 = 64 << 10

// batch is the changes of one flush, in the store's order.
type batch struct {
	Ops []op `json:"ops,omitempty"`
	// Containers, when present, is every registration, replacing the
	// previous set (registrations change rarely; entries often).
	Containers *[]CtrRecord `json:"containers,omitempty"`
}

// op is one change: exactly one of Put (an entry added) and Del (the entry
// with that id removed).
type op struct {
	Put *Record `json:"put,omitempty"`
	Del string  `json:"del,omitempty"`
	// Revoked (with Del): the removal was an enforced revocation, for the
	// ledger.
	Revoked *RevRecord `json:"revoked,omitempty"`
}

// frame returns a record of kind over the JSON of v.
func frame(kind byte, v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	b := make([]byte, recHeaderLen+1+len(body))
	b[recHeaderLen] = kind
	copy(b[recHeaderLen+1:], body)
	putRecHeader(b, b[recHeaderLen:])
	return b, nil
}

// putRecHeader writes the length and checksum of body into b's first
// recHeaderLen bytes.
func putRecHeader(b, body []byte) {
	binary.LittleEndian.PutUint32(b[0:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(body, castagnoli))
}

// journalStart is the header of generation gen and its snapshot record.
func journalStart(gen uint64, m *Meta) ([]byte, error) {
	rec, err := frame(kindSnapshot, m)
	if err != nil {
		return nil, err
	}
	b := make([]byte, headerLen, headerLen+len(rec))
	copy(b, journalMagic)
	binary.LittleEndian.PutUint64(b[len(journalMagic):], gen)
	return append(b, rec...), nil
}

// JournalInfo is what decoding a journal found beside the metadata.
type JournalInfo struct {
	Batches int // complete change records applied
	Torn    int // bytes of an incomplete last record, dropped
}

// DecodeJournal replays journal generation gen: the snapshot, then every
// complete batch. Records are validated one by one at Restore, as in a
// snapshot; the journal's structure is checked here, strictly.
func DecodeJournal(b []byte, gen uint64) (*Meta, JournalInfo, error) {
	var info JournalInfo
	if len(b) < headerLen || string(b[:len(journalMagic)]) != journalMagic {
		return nil, info, errors.New("not a capd metadata journal (bad header)")
	}
	if g := binary.LittleEndian.Uint64(b[len(journalMagic):]); g != gen {
		return nil, info, fmt.Errorf("journal of generation %d stored as generation %d", g, gen)
	}
	var m *Meta
	var live map[string]int // id -> index in m.Entries
	var keys map[store.Key]string
	for off := headerLen; off < len(b); {
		rest := b[off:]
		if len(rest) < recHeaderLen || uint64(len(rest)-recHeaderLen) < uint64(binary.LittleEndian.Uint32(rest)) {
			if m == nil {
				return nil, info, errors.New("the snapshot record is incomplete")
			}
			info.Torn = len(rest)
			break
		}
		n := int(binary.LittleEndian.Uint32(rest))
		body := rest[recHeaderLen : recHeaderLen+n]
		if n == 0 || crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(rest[4:]) {
			return nil, info, fmt.Errorf("record at offset %d: bad checksum", off)
		}
		switch {
		case m == nil && body[0] == kindSnapshot:
			var err error
			if m, err = Decode(body[1:]); err != nil {
				return nil, info, fmt.Errorf("snapshot: %w", err)
			}
			live = make(map[string]int, len(m.Entries))
			keys = make(map[store.Key]string, len(m.Entries))
			for i := range m.Entries {
				r := &m.Entries[i]
				if err := index(live, keys, r, i); err != nil {
					return nil, info, fmt.Errorf("snapshot: %w", err)
				}
			}
		case m == nil:
			return nil, info, fmt.Errorf("the first record is of kind %q, not a snapshot", body[0])
		case body[0] == kindBatch:
			var bt batch
			if err := json.Unmarshal(body[1:], &bt); err != nil {
				return nil, info, fmt.Errorf("record at offset %d: corrupt batch: %w", off, err)
			}
			if err := apply(m, live, keys, &bt); err != nil {
				return nil, info, fmt.Errorf("record at offset %d: %w", off, err)
			}
			info.Batches++
		default:
			return nil, info, fmt.Errorf("record at offset %d is of kind %q, not a batch", off, body[0])
		}
		off += recHeaderLen + n
	}
	if m == nil {
		return nil, info, errors.New("the journal has no snapshot")
	}
	// Compact what the deletions left.
	out := m.Entries[:0]
	for _, r := range m.Entries {
		if live[r.ID] >= 0 {
			out = append(out, r)
		}
	}
	m.Entries = slices.Clip(out)
	return m, info, nil
}

// index adds r, at i in the entries, to the live ids and keys: an id or a
// key that is live already is not a state the agent can write.
func index(live map[string]int, keys map[store.Key]string, r *Record, i int) error {
	if _, ok := live[r.ID]; ok {
		return fmt.Errorf("entry %s is added twice (ids are never reused)", r.ID)
	}
	k := store.Key{Owner: r.Owner, Name: r.Name}
	if id, ok := keys[k]; ok {
		return fmt.Errorf("entry %s is added as %s:%s, which %s holds", r.ID, r.Owner, r.Name, id)
	}
	live[r.ID], keys[k] = i, r.ID
	return nil
}

// apply replays one batch on m.
func apply(m *Meta, live map[string]int, keys map[store.Key]string, bt *batch) error {
	for _, o := range bt.Ops {
		switch {
		case (o.Put != nil) == (o.Del != ""):
			return errors.New("a change that is neither one put nor one del")
		case o.Revoked != nil && (o.Del == "" || o.Revoked.ID != o.Del):
			return errors.New("a revocation recorded apart from its entry's removal")
		case o.Put != nil:
			m.Entries = append(m.Entries, *o.Put)
			if err := index(live, keys, o.Put, len(m.Entries)-1); err != nil {
				return err
			}
			if n, err := store.ParseEntryID(o.Put.ID); err == nil {
				m.NextID = max(m.NextID, n+1)
			}
		default:
			i, ok := live[o.Del]
			if !ok || i < 0 {
				return fmt.Errorf("entry %s is removed but not live", o.Del)
			}
			r := &m.Entries[i]
			delete(keys, store.Key{Owner: r.Owner, Name: r.Name})
			live[o.Del] = -1 // removed: its id is never live again
			if o.Revoked != nil {
				m.Revoked = append(m.Revoked, *o.Revoked)
			}
		}
	}
	if bt.Containers != nil {
		m.Containers = *bt.Containers
	}
	return nil
}

// journal is the generation the agent appends to.
type journal struct {
	fd        linux.FD
	gen       uint64
	size      int64 // bytes written
	base      int64 // the header and snapshot
	confirmed bool  // systemd confirmed (a barrier after its Add) that it holds it
	broken    bool  // an append failed: nothing more may follow it
}

// newJournal writes generation gen with the snapshot m into a new memfd,
// sealed against shrinking only, which the journal owns.
func newJournal(gen uint64, m *Meta) (*journal, error) {
	b, err := journalStart(gen, m)
	if err != nil {
		return nil, err
	}
	fd, err := linux.MemfdCreate("capd-journal")
	if err != nil {
		return nil, err
	}
	j := &journal{gen: gen, base: int64(len(b))}
	j.fd.Own(fd)
	if err := j.write(b); err != nil {
		j.fd.Close()
		return nil, err
	}
	if err := linux.AddSeals(fd, unix.F_SEAL_SHRINK); err != nil {
		j.fd.Close()
		return nil, err
	}
	return j, nil
}

// name is the journal's name in the fd store.
func (j *journal) name() string { return journalName(j.gen) }

func journalName(gen uint64) string { return fmt.Sprintf("%s%d", JournalPrefix, gen) }

// write appends b at the end; a failure leaves the journal broken (what was
// written of b is an incomplete record, dropped at restore).
func (j *journal) write(b []byte) error {
	for len(b) > 0 {
		n, err := linux.Pwrite(j.fd.Int(), b, j.size)
		j.size += int64(max(n, 0))
		if err == nil && n == 0 {
			err = errors.New("pwrite wrote nothing")
		}
		if err != nil {
			j.broken = true
			return fmt.Errorf("append to the metadata journal: %w", err)
		}
		b = b[n:]
	}
	return nil
}

// full reports whether appending n more bytes calls for a compaction
// instead: the tail would exceed compactFactor times the snapshot (and
// minCompact), or the journal its bound.
func (j *journal) full(n int) bool {
	tail := j.size - j.base + int64(n)
	return tail > max(compactFactor*j.base, minCompact) || j.size+int64(n) > maxJournal
}

// readJournal seals journal memfd fd against every change and decodes it
// as generation gen.
func readJournal(fd int, gen uint64) (*Meta, JournalInfo, error) {
	seals, err := linux.Seals(fd)
	if err != nil {
		return nil, JournalInfo{}, fmt.Errorf("not a memfd: %w", err)
	}
	const want = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if seals&want != want {
		if err := linux.AddSeals(fd, want); err != nil {
			return nil, JournalInfo{}, fmt.Errorf("cannot seal the journal before reading it (seals %#x): %w", seals, err)
		}
	}
	var st unix.Stat_t
	if err := linux.Fstat(fd, &st); err != nil {
		return nil, JournalInfo{}, err
	}
	if st.Size > maxJournal {
		return nil, JournalInfo{}, fmt.Errorf("journal of %d bytes is larger than %d", st.Size, maxJournal)
	}
	b := make([]byte, st.Size)
	for off := 0; off < len(b); {
		n, err := linux.Pread(fd, b[off:], int64(off))
		if err == nil && n == 0 {
			err = errors.New("end of file")
		}
		if err != nil {
			return nil, JournalInfo{}, fmt.Errorf("read the journal at %d of %d bytes: %w", off, len(b), err)
		}
		off += n
	}
	return DecodeJournal(b, gen)
}

// parseMetaName parses a metadata name (a journal, or the sealed snapshot of a
// hand-off or of an older agent) into its generation.
func parseMetaName(name string) (gen uint64, journal, ok bool) {
	g, isJournal := strings.CutPrefix(name, JournalPrefix)
	if !isJournal {
		if g, ok = strings.CutPrefix(name, MetaPrefix); !ok {
			return 0, false, false
		}
	}
	n, err := parseGen(g)
	return n, isJournal, err == nil
}

func parseGen(s string) (uint64, error) {
	var n uint64
	if s == "" || len(s) > 20 || (s[0] == '0' && s != "0") {
		return 0, fmt.Errorf("generation %q", s)
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("generation %q", s)
		}
		d := uint64(c - '0')
		if n > (^uint64(0)-d)/10 {
			return 0, fmt.Errorf("generation %q", s)
		}
		n = n*10 + d
	}
	return n, nil
}
