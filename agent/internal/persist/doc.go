// Package persist keeps capd's store and container registry across
// restarts of the agent.
//
// Under systemd the agent keeps every entry's fd in its own fd store
// (named by the entry's id, "e-N...") and the metadata of the entries and
// of the registered containers in a sealed memfd stored beside them
// ("capd-meta-G", G growing with every change). systemd hands them all back
// at the next start, after a crash too, and Restore rebuilds the store and
// registry from them. A SIGUSR2 hand-off passes the same fds to the next
// agent process (Handoff). The Mirror is the store's Observer.
//
// Crash safety: a new metadata generation is stored and confirmed
// (BARRIER) before the previous generations and the fds of entries removed
// since are dropped from the fd store. A crash at any point leaves the
// highest complete generation naming fds that systemd still holds; fds no
// generation names are dropped at the next start. A change is durable once
// Sync (or Durable) returned nil.
//
// Stored state is input like any other: every record is validated field by
// field at Restore, an fd is adopted only if it is the file its record
// describes, and bad state costs only itself, never the start.
//
// Fd ownership: Restore owns every fd it is given: it hands an entry's fd
// to the store (which owns it from then on) or closes it. The Mirror owns
// its fdstore connection (Close) and closes each metadata memfd once
// systemd has its copy. Handoff's fds stay owned by the frozen store and by
// the caller (the metadata memfd) until the process execs.
//
// Lock order: Mirror.mu (serializes uploads), then the store's lock, then
// Mirror.fmu (failures and pending removals; a leaf lock the store's
// Observer calls take under the store's lock), then the registry's.
package persist
