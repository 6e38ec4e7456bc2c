package enforce

import "errors"

var (
	// ErrUnavailable: the kernel refuses BPF LSM (bpf not among the active
	// LSMs, no BTF, or EPERM/EINVAL/ENOTSUPP loading or attaching a
	// program). The error's message says which.
	ErrUnavailable = errors.New("bpf lsm unavailable")
	// ErrFull: the map of revocations is full; the caller falls back to
	// advisory revocation and logs.
	ErrFull = errors.New("revocation map full")
	// ErrNotOpen: Revoke's fd is not open in this process.
	ErrNotOpen = errors.New("fd not open in this process")
	// ErrAdopt: the fds given to Adopt are not a complete, matching set.
	ErrAdopt = errors.New("cannot adopt bpf objects")
)
