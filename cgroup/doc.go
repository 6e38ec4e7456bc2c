// Package cgroup turns cgroup v2 membership into capd identities.
//
// It owns three things: the pure mapping from a cgroup v2 path to an
// identity name (IdentityFromPath), finding the v2 hierarchy on unified and
// hybrid hosts (V2Mountpoint, through containerd/cgroups), and resolving a
// kernel cgroup id to its path (Resolver, through open_by_handle_at on the
// v2 mount).
//
// Fd ownership: a Resolver owns one read-only directory fd of the v2 mount, closed by
// Close. PathByID opens and closes one fd per call.
package cgroup
