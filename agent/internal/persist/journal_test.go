package persist

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/capd-dev/capd/agent/internal/store"
)

func rec(n int, owner, name string) Record {
	return Record{ID: store.EntryID(uint64(n), owner, name), Owner: owner, Name: name, Kind: "memfd", Cgroup: "/svc", OwnerCg: "/svc", Pinned: true}
}

func mustFrame(t testing.TB, kind byte, v any) []byte {
	t.Helper()
	b, err := frame(kind, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustStart(t testing.TB, gen uint64, m *Meta) []byte {
	t.Helper()
	b, err := journalStart(gen, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ids lists a decoded state: entry ids in order, then the containers.
func ids(m *Meta) string {
	var s []string
	for _, r := range m.Entries {
		s = append(s, r.ID)
	}
	for _, c := range m.Containers {
		s = append(s, "ctr:"+c.ID)
	}
	return fmt.Sprintf("next %d %q", m.NextID, s)
}

// A journal cut at any byte (a crash while a record was written) decodes
// to the state after its last complete record, and reports the rest as
// torn; a journal cut inside its header or snapshot does not decode.
func TestJournalTruncations(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	state := &Meta{NextID: 3, Entries: []Record{rec(1, "a.service", "x"), rec(2, "a.service", "y")}, Containers: []CtrRecord{}}
	b := mustStart(t, 7, state)
	start := len(b)
	type point struct {
		end  int
		want string
	}
	points := []point{{len(b), ids(state)}}
	live := []Record{state.Entries[0], state.Entries[1]}
	next := 3
	for range 40 {
		var bt batch
		for range 1 + rng.IntN(3) {
			if len(live) > 0 && rng.IntN(2) == 0 {
				i := rng.IntN(len(live))
				bt.Ops = append(bt.Ops, op{Del: live[i].ID})
				live = append(live[:i], live[i+1:]...)
			} else {
				r := rec(next, "b.service", fmt.Sprintf("n%d", next))
				next++
				bt.Ops = append(bt.Ops, op{Put: &r})
				live = append(live, r)
			}
		}
		if rng.IntN(5) == 0 {
			cs := []CtrRecord{{ID: fmt.Sprintf("c%d", next)}}
			bt.Containers = &cs
			state.Containers = cs
		}
		b = append(b, mustFrame(t, kindBatch, &bt)...)
		state.Entries, state.NextID = append([]Record(nil), live...), uint64(next)
		points = append(points, point{len(b), ids(state)})
	}
	for l := 0; l <= len(b); l++ {
		m, info, err := DecodeJournal(b[:l], 7)
		if l < start {
			if err == nil {
				t.Fatalf("cut at %d, inside the header or snapshot (%d bytes): decoded", l, start)
			}
			continue
		}
		if err != nil {
			t.Fatalf("cut at %d: %v", l, err)
		}
		p := points[0]
		for _, q := range points {
			if q.end <= l {
				p = q
			}
		}
		if got := ids(m); got != p.want || info.Torn != l-p.end {
			t.Fatalf("cut at %d: %s, %d bytes torn; want %s, %d torn", l, got, info.Torn, p.want, l-p.end)
		}
	}
}

// Anything but what the agent writes makes the whole journal unusable.
func TestJournalRejects(t *testing.T) {
	x, y := rec(1, "a.service", "x"), rec(2, "a.service", "y")
	y2 := rec(3, "a.service", "y")
	x2 := rec(4, "b.service", "x")
	snap := mustStart(t, 1, &Meta{NextID: 3, Entries: []Record{x, y}})
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	b := func(ops ...op) []byte { return mustFrame(t, kindBatch, &batch{Ops: ops}) }
	badCRC := b(op{Del: x.ID})
	badCRC[5] ^= 1
	flipped := b(op{Del: x.ID})
	flipped[len(flipped)-2] ^= 0x20
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"empty", "bad header", nil},
		{"bad magic", "bad header", append([]byte("CAPDJRN2"), snap[8:]...)},
		{"another generation", "generation 1 stored as generation 2", nil},
		{"header only", "no snapshot", snap[:headerLen]},
		{"batch first", "not a snapshot", cat(snap[:headerLen], b(op{Put: &x}))},
		{"a second snapshot", "not a batch", cat(snap, mustFrame(t, kindSnapshot, &Meta{}))},
		{"unknown kind", "not a batch", cat(snap, mustFrame(t, 'X', &batch{}))},
		{"bad checksum", "bad checksum", cat(snap, badCRC, b(op{Del: y.ID}))},
		{"bad checksum, last", "bad checksum", cat(snap, flipped)},
		{"zero length", "bad checksum", cat(snap, make([]byte, recHeaderLen))},
		{"corrupt batch", "corrupt batch", cat(snap, mustFrame(t, kindBatch, json.RawMessage(`{"ops":7}`)))},
		{"put of a live id", "added twice", cat(snap, b(op{Put: &x}))},
		{"put of a removed id", "added twice", cat(snap, b(op{Del: x.ID}), b(op{Put: &x}))},
		{"put of a live key", "which e-2.a.service.y holds", cat(snap, b(op{Put: &y2}))},
		{"del of an unknown id", "not live", cat(snap, b(op{Del: "e-9"}))},
		{"a revocation without its removal", "apart from its entry's removal", cat(snap, b(op{Put: &x2, Revoked: &RevRecord{ID: x2.ID}}))},
		{"a revocation of another entry", "apart from its entry's removal", cat(snap, b(op{Del: x.ID, Revoked: &RevRecord{ID: y.ID}}))},
		{"del twice", "not live", cat(snap, b(op{Del: x.ID}, op{Del: x.ID}))},
		{"put and del in one op", "neither one put nor one del", cat(snap, b(op{Put: &x2, Del: x.ID}))},
		{"an empty op", "neither one put nor one del", cat(snap, b(op{}))},
		{"snapshot with a duplicate id", "added twice", mustStart(t, 1, &Meta{Entries: []Record{x, x}})},
		{"snapshot with a duplicate key", "holds", mustStart(t, 1, &Meta{Entries: []Record{y, y2}})},
		{"corrupt snapshot", "corrupt metadata", cat(snap[:headerLen], mustFrame(t, kindSnapshot, json.RawMessage(`[1]`)))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gen := uint64(1)
			if tc.name == "another generation" {
				tc.b, gen = snap, 2
			}
			if _, _, err := DecodeJournal(tc.b, gen); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
	// What the agent writes: replace (del then put of the same key), a
	// put removed again in the same batch, containers replaced.
	cs := []CtrRecord{{ID: "c"}}
	m, info, err := DecodeJournal(cat(snap, b(op{Del: y.ID}, op{Put: &y2}), b(op{Put: &x2}, op{Del: x2.ID}), mustFrame(t, kindBatch, &batch{Containers: &cs})), 1)
	if err != nil || ids(m) != ids(&Meta{NextID: 5, Entries: []Record{x, y2}, Containers: cs}) || info.Batches != 3 || info.Torn != 0 {
		t.Fatalf("%v %s %+v", err, ids(m), info)
	}
	// Its length field is what a torn record has of itself: a complete
	// header announcing more than is there is an incomplete record.
	torn := b(op{Del: x.ID})
	binary.LittleEndian.PutUint32(torn, 1<<30)
	if _, info, err := DecodeJournal(cat(snap, torn), 1); err != nil || info.Torn != len(torn) {
		t.Fatalf("%v %+v", err, info)
	}
}

func TestParseMetaName(t *testing.T) {
	for _, tc := range []struct {
		name    string
		gen     uint64
		journal bool
		ok      bool
	}{
		{"capd-journal-1", 1, true, true},
		{"capd-meta-12", 12, false, true},
		{"capd-journal-18446744073709551615", 1<<64 - 1, true, true},
		{"capd-journal-18446744073709551616", 0, false, false},
		{"capd-journal-01", 0, false, false},
		{"capd-journal-", 0, false, false},
		{"capd-journal-+1", 0, false, false},
		{"capd-meta-1x", 0, false, false},
		{"e-1", 0, false, false},
	} {
		g, j, ok := parseMetaName(tc.name)
		if ok != tc.ok || ok && (g != tc.gen || j != tc.journal) {
			t.Errorf("parseMetaName(%q) = %d, %v, %v", tc.name, g, j, ok)
		}
	}
}

// An enforced revocation rides on its entry's removal into the ledger.
func TestJournalLedger(t *testing.T) {
	x, y := rec(1, "a.service", "x"), rec(2, "a.service", "y")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	j := bytes.Join([][]byte{
		mustStart(t, 1, &Meta{NextID: 3, Entries: []Record{x, y}, Revoked: []RevRecord{{ID: "e-0.old", Owner: "o", Name: "n", At: at}}}),
		mustFrame(t, kindBatch, &batch{Ops: []op{{Del: x.ID, Revoked: &RevRecord{ID: x.ID, Owner: x.Owner, Name: x.Name, At: at}}, {Del: y.ID}}}),
	}, nil)
	m, _, err := DecodeJournal(j, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Revoked) != 2 || m.Revoked[1].ID != x.ID || len(m.Entries) != 0 {
		t.Fatalf("ledger %+v, entries %d", m.Revoked, len(m.Entries))
	}
	if l := ledgerOf(m.Revoked); len(l) != 1 || l[0].Seq != 1 {
		t.Fatalf("ledgerOf drops ids that are no entry's: %+v", l)
	}
}
