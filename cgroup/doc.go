// Package cgroup turns cgroup v2 membership into capd identities and
// follows cgroups' lives.
//
// It owns four things: the pure mapping from a cgroup v2 path to an
// identity and its owner cgroup (Owner, IdentityFromPath: systemd units and
// slices, plain cgroups), finding the v2 hierarchy on unified and hybrid
// hosts (V2Mountpoint, through containerd/cgroups), resolving a process's
// cgroup to its path (Resolver: a kernel cgroup id through
// open_by_handle_at on the v2 mount, or /proc/PID/cgroup with ProcPath),
// and reporting when a cgroup has no processes left (Watcher: inotify on
// cgroup.events, one goroutine for every watched cgroup, epochs that tell
// an emptying from a cgroup removed and created again).
//
// Fd ownership: a Resolver owns one read-only directory fd of the v2
// mount, closed by Close. PathByID opens and closes one fd per call, as
// ProcPath does for a path it must look up. A Watcher owns its inotify fd
// and its poller's eventfd, closed by Close after its goroutine ended.
//
// Lock order: Watcher.mu is a leaf; the onEmpty callback runs without it.
package cgroup
