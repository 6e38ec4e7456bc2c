package cgroup

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	cgroups "github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// V2Mountpoint returns where the cgroup v2 hierarchy is mounted:
// /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones.
func V2Mountpoint() (string, error) {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return "/sys/fs/cgroup", nil
	case cgroups.Hybrid:
		return "/sys/fs/cgroup/unified", nil
	}
	return "", ErrNoV2
}

// Resolver maps kernel cgroup ids to cgroup v2 paths.
type Resolver struct {
	mount   string
	mountFD int
}

// NewResolver opens the v2 mount. The caller needs CAP_DAC_READ_SEARCH for
// PathByID (open_by_handle_at).
func NewResolver() (*Resolver, error) {
	mount, err := V2Mountpoint()
	if err != nil {
		return nil, err
	}
	fd, err := linux.Open(mount, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup v2 mount: %w", err)
	}
	return &Resolver{mount: mount, mountFD: fd}, nil
}

// Mount returns the v2 mountpoint the resolver works on.
func (r *Resolver) Mount() string { return r.mount }

// Close releases the mount fd.
func (r *Resolver) Close() error { return linux.Close(r.mountFD) }

// PathByID returns the path, relative to the v2 root, of the cgroup with the
// given id (the inode number of its directory, as PIDFD_GET_INFO reports).
// Cgroup ids are never reused while the system runs.
func (r *Resolver) PathByID(id uint64) (string, error) {
	fd, err := linux.OpenKernfsByID(r.mountFD, id)
	if err != nil {
		return "", fmt.Errorf("open cgroup %d: %w", id, err)
	}
	defer linux.Close(fd)
	p, err := linux.FdPath(fd)
	if err != nil {
		return "", fmt.Errorf("cgroup %d: %w", id, err)
	}
	return r.relative(p)
}

func (r *Resolver) relative(abs string) (string, error) {
	if abs == r.mount {
		return "/", nil
	}
	rel, ok := strings.CutPrefix(abs, r.mount+"/")
	if !ok {
		return "", fmt.Errorf("cgroup path %q is outside %s", abs, r.mount)
	}
	return "/" + rel, nil
}

// Abs returns the absolute filesystem path of a cgroup v2 path.
func (r *Resolver) Abs(p string) string {
	if p == "/" {
		return r.mount
	}
	return r.mount + p
}

// deletedSuffix is what the kernel appends in /proc/PID/cgroup to the path
// of a removed cgroup. A cgroup may also be named so.
const deletedSuffix = " (deleted)"

// ProcPath reads the cgroup v2 path of pid from /proc/PID/cgroup (the "0::"
// line, parsed by containerd/cgroups) and returns it as the kernel printed
// it. The kernel appends " (deleted)" to the path of a removed cgroup, and
// a cgroup can be named that way too ("zincati.service (deleted)"), so the
// suffix is never stripped: such a path is returned only if a cgroup of
// that literal name exists below r's mount, and otherwise the call fails
// with ErrCgroupRemoved. The caller must check afterwards, with a pidfd,
// that pid still names the same process.
func (r *Resolver) ProcPath(pid int) (string, error) {
	p, err := readProcPath(pid)
	if err != nil || !strings.HasSuffix(p, deletedSuffix) {
		return p, err
	}
	return r.checkDeleted(pid, p)
}

// ProcPath is Resolver.ProcPath for callers without a Resolver: it opens
// the v2 mount only when the path ends in " (deleted)".
func ProcPath(pid int) (string, error) {
	p, err := readProcPath(pid)
	if err != nil || !strings.HasSuffix(p, deletedSuffix) {
		return p, err
	}
	r, err := NewResolver()
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	defer r.Close()
	return r.checkDeleted(pid, p)
}

func readProcPath(pid int) (string, error) {
	_, p, err := cgroups.ParseCgroupFileUnified("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", fmt.Errorf("read cgroup of pid %d: %w", pid, err)
	}
	if p == "" {
		return "", fmt.Errorf("pid %d: %w", pid, ErrNoV2)
	}
	return p, nil
}

// checkDeleted returns p, the cgroup of pid ending in " (deleted)", if a
// cgroup of that literal name exists, and ErrCgroupRemoved if none does.
func (r *Resolver) checkDeleted(pid int, p string) (string, error) {
	exists, err := r.exists(p)
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	if !exists {
		return "", fmt.Errorf("cgroup of pid %d (%q): %w", pid, p, ErrCgroupRemoved)
	}
	return p, nil
}

// exists reports whether cgroup v2 path p names a cgroup directory below
// the mount, resolved without leaving it (no "..", symlinks or other
// mounts): a path that cannot be checked so is an error, never a guess.
func (r *Resolver) exists(p string) (bool, error) {
	rel := strings.TrimPrefix(p, "/")
	if rel == "" {
		return true, nil
	}
	fd, err := linux.OpenBeneath(r.mountFD, rel, unix.O_PATH|unix.O_DIRECTORY)
	switch {
	case err == nil:
		linux.Close(fd)
		return true, nil
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return false, nil
	}
	return false, fmt.Errorf("look up cgroup %q: %w", p, err)
}
