// Package store holds capd's named fds: entries keyed by owner identity and
// name, with reference counts, replace and revoke, expiry, the quotas of
// cgroup subtrees, per-uid limits, the admin reserve, tombstones of removed
// entries for audit, and waiters for names not yet published.
//
// It has no sockets and no systemd: what it needs from outside comes
// through small interfaces given to New. A Watcher reports whether an
// owner cgroup still has processes (an unpinned entry lives only while it
// does); an Observer (the fd-store mirror) sees every insert and removal
// under the store's lock, in the store's order; a Clock drives expiry; the
// limits of each publish come with it (Limits). Errors are the sentinels of
// errors.go, wrapped in a *refusal.Error with a message for the client;
// the agent maps them to wire codes.
//
// Fd ownership: an Entry owns one fd (a linux.FD) behind a reference
// count. The store holds one reference while the entry is published and
// drops it on revoke, replace, expiry, drop or Close; Acquire adds one for
// the caller, who must Release it once done with the fd (a concurrent
// revoke can then never make the caller use a recycled number). The last
// reference hands the fd to a closer (internal/closer) keyed by the uid the
// entry counts against: close(2) may block (a lingering socket, a stuck
// FUSE file) and never runs on the goroutine of a request or under the
// store's lock, and fds still being closed count against their uid's
// limits.
//
// Concurrency: every method is safe for concurrent use. Lock order:
// Store.mu, then the leaf locks (the Observer's methods called under it,
// the closer's, the Watcher's). The expiry timer is one for the whole store.
// No goroutine or timer exists per entry.
package store
