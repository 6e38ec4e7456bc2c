// Package cgroup turns cgroup v2 membership into capd identities.
//
// It owns three things: the pure mapping from a cgroup v2 path to an
// identity name (IdentityFromPath), finding the v2 hierarchy on unified and
// hybrid hosts (V2Mountpoint, through containerd/cgroups), and resolving a
// process's cgroup to its path (Resolver: a kernel cgroup id through
// open_by_handle_at on the v2 mount, or /proc/PID/cgroup with ProcPath).
//
// Fd ownership: a Resolver owns one read-only directory fd of the v2 mount, closed by
// Close. PathByID opens and closes one fd per call, as ProcPath does for a
// path it must look up.
package cgroup
