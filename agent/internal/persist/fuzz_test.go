package persist

import (
	"bytes"
	"encoding/json"
	"iter"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/internal/linux"
)

// FuzzRestore feeds arbitrary metadata to Restore, beside entry fds and
// one named c-1: as a journal when legacy is false (each line of b one
// record: its first byte the kind, S or B, the rest its JSON; framed with
// valid checksums, so that the fuzzer reaches the replay and the records'
// validation; an unterminated last line is left incomplete, as a crash
// while it was written leaves it), else as the sealed snapshot a hand-off
// or an older agent passes ("@dev" and "@ino" in b stand for the device
// and inode of the fd named e-2.x.service.c). Restore must return (not
// loop, not panic), adopt an fd only for a valid record describing it, and
// leave every other fd closed (TestMain's leak check).
func FuzzRestore(f *testing.F) {
	for _, seed := range []string{
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"x","owner_cgroup":"/"}]}`,
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"","owner_cgroup":"/"}]}`,
		`{"entries":[{"id":"e-1","owner":"a.service","name":"b","pinned":true,"cgroup":"a/b","owner_cgroup":"/"}]}`,
		`{"next_id":7,"entries":[{"id":"e-1","owner":"cgroup:/","name":"b","pinned":true,"kind":"memfd","cgroup":"/","owner_cgroup":"/"}]}`,
		`{"entries":[{"id":"e-1","owner":"x.service","name":"b","kind":"memfd","cgroup":"/svc/a","owner_cgroup":"/svc"}]}`,
		`{"entries":[],"containers":[{"fd":"c-1","id":"x","identity":"container:x","cgroup":"/ctr"}]}`,
		`{"entries":[{"id":"e-1","owner":"cgroup:/","name":"b","allow":["[bad"],"kind":"file","cgroup":"/","owner_cgroup":"/"}]}`,
		`not json`,
	} {
		f.Add([]byte(seed), true)
		f.Add([]byte("S"+seed+"\n"), false)
	}
	const put2 = `{"id":"e-2.x.service.c","owner":"x.service","name":"c","pinned":true,"kind":"memfd","cgroup":"/svc","owner_cgroup":"/svc","dev":"@dev","ino":"@ino"}`
	for _, seed := range []string{
		"S{\"entries\":[]}\nB{\"ops\":[{\"put\":" + put2 + "}]}\n",
		"S{\"entries\":[]}\nB{\"ops\":[{\"put\":" + put2 + "},{\"del\":\"e-2.x.service.c\"}]}\n",
		"S{\"entries\":[]}\nB{\"ops\":[{\"put\":" + put2 + "}]}\nB{\"ops\":[{\"del\":\"e-2.x.service.c\"}]}",
		"S{\"entries\":[]}\nB{\"containers\":[{\"id\":\"x\",\"identity\":\"container:x\",\"cgroup\":\"/ctr\",\"cgroup_id\":2}]}\n",
		"S{\"entries\":[" + put2 + "]}\nB{\"ops\":[{\"del\":\"e-2.x.service.c\"},{\"put\":" + put2 + "}]}\n",
		"B{}\n",
	} {
		f.Add([]byte(seed), false)
	}
	f.Fuzz(func(t *testing.T, b []byte, legacy bool) {
		fx := newFixture(t, cgroups{"/svc": 1, "/ctr": 2})
		var stored []Stored
		for _, n := range []string{"e-1", "e-2.x.service.c", "c-1"} {
			fd, err := linux.MemfdCreate(n)
			if err != nil {
				t.Fatal(err)
			}
			stored = append(stored, Stored{n, fd})
		}
		// "@dev" and "@ino" stand for e-2's file, so that records can
		// describe it.
		dev, ino, _ := linux.FileID(stored[1].FD)
		b = bytes.ReplaceAll(b, []byte(`"@dev"`), []byte(strconv.FormatUint(dev, 10)))
		b = bytes.ReplaceAll(b, []byte(`"@ino"`), []byte(strconv.FormatUint(ino, 10)))
		var mfd int
		var err error
		name := "capd-meta-1"
		if legacy {
			mfd, err = linux.SealedMemfd("fuzz", b)
		} else {
			name = "capd-journal-1"
			mfd, err = linux.MemfdCreate("fuzz")
			if err == nil {
				_, err = unix.Write(mfd, fuzzJournal(t, b))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, Stored{name, mfd})
		done := make(chan int, 1)
		go func() { done <- Restore(fx.log, stored, fx.st, fx.reg, nil) }()
		select {
		case n := <-done:
			if n > 2 {
				t.Fatalf("restored %d entries from two fds", n)
			}
			// Whatever was adopted is the file its valid record describes.
			fx.st.ReadLocked(func(_ uint64, entries iter.Seq[*store.Entry], _ []store.Revoked) {
				for e := range entries {
					r := recordOf(e)
					if err := ValidRecord(&r); err != nil {
						t.Errorf("restored %s: %v", e.ID(), err)
					}
					dev, ino := e.File()
					if d, i, _ := linux.FileID(e.FD()); d != dev || i != ino || linux.FdKind(e.FD()) != e.Kind() {
						t.Errorf("restored %s over another file", e.ID())
					}
				}
			})
		case <-time.After(5 * time.Second):
			t.Fatalf("Restore did not return within 5s for %q", b)
		}
	})
}

// fuzzJournal frames b's lines as journal generation 1 (see FuzzRestore).
func fuzzJournal(t *testing.T, b []byte) []byte {
	out, err := journalStart(1, &Meta{})
	if err != nil {
		t.Fatal(err)
	}
	out = out[:headerLen]
	lines := bytes.Split(b, []byte("\n"))
	for i, l := range lines {
		if len(l) == 0 {
			continue
		}
		rec, err := frame(l[0], json.RawMessage("0"))
		if err != nil {
			t.Fatal(err)
		}
		rec = append(rec[:recHeaderLen+1], l[1:]...)
		framed := reframe(rec)
		if i == len(lines)-1 {
			framed = framed[:len(framed)/2] // unterminated: incomplete
		}
		out = append(out, framed...)
	}
	return out
}

// reframe sets a record's length and checksum to match its body.
func reframe(rec []byte) []byte {
	body := rec[recHeaderLen:]
	putRecHeader(rec, body)
	return rec
}

// FuzzDecodeJournal feeds arbitrary bytes to the journal decoder: it must
// not panic, and what it decodes must survive a round trip through the
// encoder unchanged.
func FuzzDecodeJournal(f *testing.F) {
	snap, _ := journalStart(1, &Meta{NextID: 2, Entries: []Record{rec(1, "a.service", "x")}})
	r2 := rec(2, "a.service", "y")
	b1, _ := frame(kindBatch, &batch{Ops: []op{{Put: &r2}, {Del: rec(1, "a.service", "x").ID}}})
	f.Add(snap)
	f.Add(append(append([]byte(nil), snap...), b1...))
	f.Add(append(append([]byte(nil), snap...), b1[:5]...))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, _, err := DecodeJournal(b, 1)
		if err != nil {
			return
		}
		again, err := journalStart(1, m)
		if err != nil {
			t.Fatal(err)
		}
		m2, info, err := DecodeJournal(again, 1)
		if err != nil || info.Torn != 0 || info.Batches != 0 {
			t.Fatalf("re-encoded journal: %v %+v", err, info)
		}
		j1, _ := json.Marshal(m)
		j2, _ := json.Marshal(m2)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("round trip changed the metadata:\n%s\n%s", j1, j2)
		}
	})
}
