package cgroup

import "errors"

var (
	// ErrNoV2 reports a host without a cgroup v2 hierarchy (legacy v1 only).
	ErrNoV2 = errors.New("no cgroup v2 hierarchy mounted (capd needs the unified or hybrid layout)")
	// ErrCgroupRemoved reports a process whose cgroup was removed (it has
	// exited, or is exiting): the kernel shows the path with " (deleted)"
	// appended, and no identity can be taken from it.
	ErrCgroupRemoved = errors.New("the process's cgroup was removed")
)
