// Package registry holds the registered containers and gives every cgroup
// its identity: a registered container's ("container:NAME", with
// "container:ID" as an alias), a machine's that systemd-machined knows
// ("machine:NAME", with its unit as an alias), a unit's, or the plain
// cgroup's (see cgroup.Owner).
//
// A registration binds a container's id and name to its cgroup, which the
// agent took from the container's init (never from the request), and lasts
// while any process remains in that cgroup or below it: the init's exit
// alone ends nothing, so a process that outlives the init keeps the
// container's identity and never becomes a host process. Sources today:
// the OCI hook (REGISTER and UNREGISTER requests) and the records the
// persistence layer restores.
//
// The registry owns no fds and runs no goroutine or timer: a Watcher
// (cgroup.Watcher) follows each registered cgroup, and its owner reports an
// emptied cgroup to Emptied. Cgroups says what a cgroup path is now (its
// directory's inode, whether it has processes).
//
// Concurrency: every method is safe for concurrent use. Lock order:
// Registry.mu, then the Watcher's lock (Add takes the watch, and reads the
// cgroup's inode through Cgroups, under Registry.mu, so that an emptying
// reported meanwhile waits for the registration it concerns); nothing else
// is taken under it.
package registry
