package agent

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
)

// Identity is who a connection belongs to, as the kernel reports it.
type Identity struct {
	// Name is the identity policy works with: "NAME.service",
	// "NAME.scope" or "cgroup:/path" (see cgroup.IdentityFromPath).
	Name string
	// Cgroup is the peer's cgroup v2 path when identity was resolved.
	Cgroup string
	// OwnerCgroup is the cgroup whose life is the identity's: the unit's
	// cgroup, or Cgroup itself (see cgroup.Owner).
	OwnerCgroup string
	// UID, GID and PID are the peer's credentials when it connected.
	UID, GID uint32
	PID      int32
	// Container is the registered container the peer runs in ("" if
	// none); Aliases are further names policy matches it by.
	Container string
	Aliases   []string
}

// Names returns every name policy may know the identity by.
func (id *Identity) Names() []string {
	if len(id.Aliases) == 0 {
		return []string{id.Name}
	}
	return append([]string{id.Name}, id.Aliases...)
}

// oldKernel makes resolvePeer act as on a kernel without SO_PEERPIDFD and
// PIDFD_GET_INFO, so that tests exercise the fallback on this kernel.
var oldKernel atomic.Bool

// resolvePeer learns the identity of the process that connected sock.
//
// Credentials come from SO_PEERCRED (fixed at connect). The cgroup comes from
// a pidfd of the peer: SO_PEERPIDFD (Linux >= 6.5), then PIDFD_GET_INFO for
// the cgroup id (Linux >= 6.13), resolved to a path through the v2 mount.
// Older kernels fall back to /proc/PID/cgroup, accepted only if the pidfd
// still shows the process alive after the read, so the pid was not recycled
// in between. Nothing the client sends takes part.
func resolvePeer(sock int, r *cgroup.Resolver) (Identity, error) {
	cred, err := linux.PeerCred(sock)
	if err != nil {
		return Identity{}, err
	}
	id := Identity{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
	pidfd, err := linux.PeerPidfd(sock)
	if err == nil && oldKernel.Load() {
		linux.Close(pidfd)
		err = unix.ENOPROTOOPT
	}
	if errors.Is(err, unix.ENOPROTOOPT) {
		// Kernel < 6.5: the pid may have been recycled since connect; the
		// liveness check below narrows but cannot close that window.
		pidfd, err = linux.PidfdOpen(int(cred.Pid))
	}
	// On kernels with SO_PEERPIDFD, EINVAL/ESRCH mean the peer has exited:
	// deny rather than guess from a pid that may be reused.
	if err != nil {
		return Identity{}, fmt.Errorf("pidfd of peer %d: %w", cred.Pid, err)
	}
	defer linux.Close(pidfd)

	id.Cgroup, err = cgroupOf(pidfd, int(cred.Pid), r)
	if err != nil {
		return Identity{}, err
	}
	id.Name, id.OwnerCgroup = cgroup.Owner(id.Cgroup)
	return id, nil
}

// cgroupOf returns the cgroup v2 path of the process behind pidfd: from
// PIDFD_GET_INFO (Linux >= 6.13), else from /proc/PID/cgroup, accepted only
// if the pidfd shows the process still alive after the read. pid is the
// process's pid, or 0 to take it from the pidfd.
func cgroupOf(pidfd, pid int, r *cgroup.Resolver) (string, error) {
	info, err := linux.PidfdGetInfo(pidfd, unix.PIDFD_INFO_CGROUPID)
	if oldKernel.Load() {
		info, err = nil, unix.ENOTTY
	}
	if err == nil && info.Mask&unix.PIDFD_INFO_CGROUPID != 0 {
		p, perr := r.PathByID(info.Cgroupid)
		if perr == nil {
			return p, nil
		}
		// open_by_handle_at needs CAP_DAC_READ_SEARCH in the initial user
		// namespace, which a containerized agent (systemd-nspawn) lacks:
		// fall back to /proc, checked against the pidfd below.
		if !errors.Is(perr, unix.EPERM) {
			return "", fmt.Errorf("cgroup of pid %d: %w", info.Pid, perr)
		}
	}
	switch {
	case err == nil, errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EINVAL):
		if pid == 0 {
			if pid, err = linux.PidfdPid(pidfd); err != nil {
				return "", err
			}
		}
		p, err := cgroup.ProcPath(pid)
		if err != nil {
			return "", err
		}
		alive, err := linux.PidfdAlive(pidfd)
		if err != nil {
			return "", err
		}
		if !alive {
			return "", fmt.Errorf("process %d exited during identification: %w", pid, unix.ESRCH)
		}
		return p, nil
	}
	return "", fmt.Errorf("identify process %d: %w", pid, err)
}
