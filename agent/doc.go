// Package agent is the capd daemon: it accepts clients on an AF_UNIX
// SOCK_SEQPACKET socket, learns each client's identity from the kernel once
// per connection (identity.go: uid, cgroup, capabilities, user and pid
// namespaces, through the peer's pidfd), asks the one authorization
// decision (policy.Config.Authorize) for every request, and serves publish,
// acquire, revoke, list, status, audit, reload, whoami and container
// registration against a store of named fds.
//
// Files: server.go (admission, per-uid connection limits, drain), conn.go
// (one connection's requests), identity.go, store.go (entries, quotas,
// per-uid limits, TTLs, drops, waiters), containers.go and register.go (the
// container registry: a registration lives while its cgroup has
// processes), persist.go (systemd's fd store, restore, hand-off), audit.go,
// ratelog.go (log limits per uid).
//
// Concurrency: one goroutine per connection, doing plain blocking
// recvmsg/sendmsg with SO_RCVTIMEO/SO_SNDTIMEO as idle and send limits; the
// number of connections is bounded globally and per accounting uid, and a
// connection has at most one request in flight. Expiry uses one timer for
// the whole store; owner cgroups and container cgroups share one inotify
// watcher (one goroutine); released fds are closed by internal/closer's
// bounded workers, never on a goroutine that serves anyone else.
//
// Fd ownership: the store owns one fd per entry behind a reference count.
// The store's own reference is dropped on revoke, replace, expiry or drop;
// an acquire holds a reference only while sendmsg runs, so a concurrent
// revoke can never make the agent send a recycled fd number. The last
// reference hands the fd to the closer. The registry owns no fds (it closes
// the init's pidfd a registration carries once it read the cgroup). Each
// connection goroutine owns its socket and closes it exactly once; Drain
// only shuts sockets' receiving side down to wake their readers.
//
// Lock order: persist.mu, then store.mu, then the leaf locks (persist.fmu,
// registry.mu, the closer's, a log limiter's); Server.mu is never held
// while taking any of them.
package agent
