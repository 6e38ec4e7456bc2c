// Package persist keeps capd's store and container registry across
// restarts of the agent.
//
// Under systemd the agent keeps every entry's fd in its own fd store
// (named by the entry's id, "e-N...") and the metadata of the entries and
// of the registered containers in a journal memfd stored beside them
// ("capd-journal-G", journal.go): a snapshot, then one record appended per
// flush, so that a change costs the same whatever the number of entries; a
// compaction writes generation G+1, a new snapshot, when the records
// outgrow the snapshot. systemd hands them all back at the next start,
// after a crash too, and Restore rebuilds the store and registry from
// them. A SIGUSR2 hand-off passes the same fds to the next agent process
// (Handoff), with the metadata as one sealed snapshot ("capd-meta-G", which
// is also what older agents stored). The Mirror is the store's Observer.
//
// Crash safety: an entry's fd is confirmed in the fd store (BARRIER)
// before the record naming it is appended; a record is one pwrite(2) of
// all the changes of a flush, and one that a crash cut short is dropped
// (it was never acknowledged), so a replace is never half done. A new
// generation is stored before the old one and the fds of entries removed
// since are dropped. A crash at any point leaves the highest complete
// generation naming fds that systemd still holds; fds no generation names
// are dropped at the next start, and anything in that generation that is
// not what the agent writes discards all of it, never an older generation
// that might bring back a revoked entry. A change is durable once Sync (or
// Durable) returned nil.
//
// Stored state is input like any other: every record is validated field by
// field at Restore, an fd is adopted only if it is the file its record
// describes, and bad state costs only itself, never the start.
//
// Fd ownership: Restore owns every fd it is given: it hands an entry's fd
// to the store (which owns it from then on) or closes it. The Mirror owns
// its fdstore connection and the journal memfd it appends to (Close); it
// closes the journal's fd once a newer generation replaced it. Handoff's fds stay owned by the frozen store and by
// the caller (the metadata memfd) until the process execs.
//
// Lock order: Mirror.mu (serializes uploads), then the store's lock, then
// Mirror.fmu (failures and pending removals; a leaf lock the store's
// Observer calls take under the store's lock), then the registry's.
package persist
