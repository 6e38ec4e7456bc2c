// Package agent assembles the capd daemon: Run (signals, sd_notify,
// reload, the private mount namespace, the SIGUSR2 hand-off), the accept
// loop and connection limits (server.go), one connection's requests
// (conn.go, register.go: decoding, the one authorization call per request,
// the replies), the peer's identity from the kernel (identity.go), the one
// mapping from errors to wire codes (errors.go), log limits per uid
// (ratelog.go) and what the metrics endpoint shows (metrics.go: counters
// the request path increments with atomics, gauges read at scrape time).
// What it serves lives in agent/internal: the store of named fds (store),
// the registered containers and identities (registry), the fd-store
// mirror, restore and hand-off (persist), audit (audit) and the metrics
// endpoint's HTTP (metrics); the decision itself is agent/policy's
// Config.Authorize.
//
// Identity: a connection's peer is read once, at admission: SO_PEERCRED
// and a pidfd, then its cgroup, capabilities and namespaces through the
// pidfd; nothing the client sends takes part. A fact the agent cannot
// establish counts as absent, which gives less authority.
//
// Concurrency: one goroutine per connection, its socket an fdpass.Conn:
// recvmsg/sendmsg made directly, and the wait for the next request first
// held in a blocking recvmsg for about a tick (at most maxHeld connections
// at once), then parked on the Go runtime's poller, so that an idle
// connection holds no OS thread; idle_timeout and send_timeout are deadlines
// on the poller. The number of connections is bounded globally and per
// accounting uid, and a connection has at most one request in flight. Expiry
// uses one timer for the whole store; owner cgroups and container cgroups
// share one inotify watcher (one goroutine, cgroup.Watcher), whose reports
// reach the store and registry through Server.cgroupEmptied; released fds
// are closed by internal/closer's bounded workers, never on a goroutine that
// serves anyone else.
//
// Fd ownership: the store owns each entry's fd (see package store); an
// acquire reply holds a reference only while sendmsg runs. A request's fd is
// a linux.FD the connection owns: publish and register take it, and whatever
// is left is closed after the reply. An audit reply's memfd is the reply's,
// closed after sending. The peer's pidfd is closed once the peer is
// identified. Each connection goroutine owns its socket (the fdpass.Conn)
// and closes it exactly once; Drain only shuts sockets' receiving side down,
// through the Conn (whose lock keeps Close from freeing the number
// meanwhile), to wake their readers. A parked connection's poller watches a
// duplicate of its socket, the park's own, closed when the wait ends. The
// Server owns its poller's eventfd, the cgroup watcher and resolver, and the
// mirror's notification socket (Close).
//
// Lock order: the mirror's upload lock, then the store's lock, then the
// leaf locks (the mirror's failure list, the registry's, the watcher's,
// the closer's, a log limiter's); Server.mu is never held while taking any
// of them. A metrics scrape takes Server.mu, the store's, the registry's
// and the watcher's lock one at a time, each briefly, and none while it
// sends.
package agent
