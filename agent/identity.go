package agent

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
)

// peer is who a connection belongs to, as the kernel reports it: the
// policy.Caller that authorization decides on, and what the store needs
// besides.
type peer struct {
	policy.Caller
	// Cgroup is the peer's cgroup v2 path; OwnerCgroup the cgroup whose
	// life is the identity's: the unit's cgroup, a registered container's
	// cgroup, or Cgroup itself (see cgroup.Owner).
	Cgroup      string
	OwnerCgroup string
	// CgroupID is Cgroup's id as PIDFD_GET_INFO reported it (0: not known).
	CgroupID uint64
	// Acct is the uid that limits count against: UID, or for a process in
	// a user namespace the owner of the outermost user namespace below the
	// agent's (see acctUID).
	Acct uint32
	GID  uint32
	PID  int32
}

// host is what the agent compares peers with: its own user namespace and
// pid namespace depth.
type host struct {
	userNS   linux.NsID
	pidDepth int
}

func hostNamespaces() (host, error) {
	u, err := linux.SelfNamespace(linux.UserNS)
	if err != nil {
		return host{}, err
	}
	st, err := linux.ReadProcStatus("self")
	if err != nil {
		return host{}, err
	}
	return host{userNS: u, pidDepth: st.PIDDepth}, nil
}

// oldKernel makes resolvePeer act as on a kernel without SO_PEERPIDFD,
// PIDFD_GET_INFO and the pidfd namespace ioctls, so that tests exercise
// the fallbacks on this kernel.
var oldKernel atomic.Bool

// peerPidfd returns a pidfd of the process that connected sock:
// SO_PEERPIDFD (Linux >= 6.5), else pidfd_open of the SO_PEERCRED pid, where
// a pid recycled since connect cannot be excluded.
func peerPidfd(sock int, cred *unix.Ucred) (int, error) {
	pidfd, err := linux.PeerPidfd(sock)
	if err == nil && oldKernel.Load() {
		linux.Close(pidfd)
		err = unix.ENOPROTOOPT
	}
	if errors.Is(err, unix.ENOPROTOOPT) {
		pidfd, err = linux.PidfdOpen(int(cred.Pid))
	}
	// On kernels with SO_PEERPIDFD, EINVAL/ESRCH mean the peer has exited:
	// deny rather than guess from a pid that may be reused.
	if err != nil {
		return -1, fmt.Errorf("pidfd of peer %d: %w", cred.Pid, err)
	}
	return pidfd, nil
}

// resolvePeer learns the identity of the process that connected a socket,
// from its credentials (SO_PEERCRED) and a pidfd of it (peerPidfd, or the
// error getting one), which the caller took once at accept and still owns.
//
// Credentials come from SO_PEERCRED (fixed at connect). Everything else
// comes from a pidfd of the peer, or from /proc read by pid and accepted
// only if the pidfd still shows the process alive afterwards, so the pid
// was not recycled in between: the cgroup (PIDFD_GET_INFO, else
// /proc/PID/cgroup), the effective capabilities and pid namespace depth
// (/proc/PID/status), and the user namespace (PIDFD_GET_USER_NAMESPACE,
// else /proc/PID/ns/user); the identity follows from the cgroup
// (registry.Identify: a registered container, a machine, a unit). Nothing
// the client sends takes part. A fact the agent cannot establish is left
// false, which gives less authority.
func resolvePeer(cred *unix.Ucred, pidfd int, pidfdErr error, r *cgroup.Resolver, reg *registry.Registry, h host) (peer, error) {
	if pidfdErr != nil {
		return peer{}, pidfdErr
	}
	p := peer{GID: cred.Gid, PID: cred.Pid}
	var err error
	p.UID, p.Acct = cred.Uid, cred.Uid

	p.Cgroup, p.CgroupID, err = cgroupOf(pidfd, int(cred.Pid), r)
	if err != nil {
		return peer{}, err
	}
	id := reg.Identify(p.Cgroup)
	p.Identity, p.OwnerCgroup, p.Aliases, p.Container = id.Name, id.OwnerCgroup, id.Aliases, id.Container

	st, err := linux.ReadProcStatus(fmt.Sprint(cred.Pid))
	if err == nil {
		err = stillAlive(pidfd, int(cred.Pid))
	}
	if err != nil {
		return peer{}, fmt.Errorf("status of pid %d: %w", cred.Pid, err)
	}
	p.CapSysAdmin, p.CapSysPtrace = st.HasCap(linux.CapSysAdmin), st.HasCap(linux.CapSysPtrace)
	ns, err := userNS(pidfd, int(cred.Pid))
	switch {
	case err != nil:
		p.Why = "the agent cannot read its user namespace: " + err.Error()
	case ns != h.userNS:
		p.Why = "it runs in a user namespace of its own"
	case st.PIDDepth != h.pidDepth:
		p.Why = "it runs in a pid namespace of its own"
	default:
		p.HostNamespaces = true
	}
	return p, nil
}

func stillAlive(pidfd, pid int) error {
	alive, err := linux.PidfdAlive(pidfd)
	if err != nil {
		return err
	}
	if !alive {
		return fmt.Errorf("process %d exited during identification: %w", pid, unix.ESRCH)
	}
	return nil
}

// userNS returns the user namespace of the process behind pidfd.
func userNS(pidfd, pid int) (linux.NsID, error) {
	fd, err := linux.PidfdNamespace(pidfd, linux.UserNS)
	if oldKernel.Load() {
		if err == nil {
			linux.Close(fd)
		}
		err = unix.ENOTTY
	}
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
		if fd, err = linux.ProcNamespace(pid, linux.UserNS); err == nil {
			if err = stillAlive(pidfd, pid); err != nil {
				linux.Close(fd)
			}
		}
	}
	if err != nil {
		return linux.NsID{}, err
	}
	defer linux.Close(fd)
	return linux.NamespaceID(fd)
}

// acctUID returns the uid that connection limits count the peer behind
// pidfd (-1: none could be had) against: its uid, or, when it runs in a user namespace below the agent's,
// the uid (in the agent's namespace) that created the outermost of those
// namespaces, so that one user with many mapped uids is still one user.
// Where the kernel does not tell, it is the peer's uid.
func acctUID(cred *unix.Ucred, pidfd int, h host) uint32 {
	if pidfd < 0 {
		return cred.Uid
	}
	fd, err := linux.PidfdNamespace(pidfd, linux.UserNS)
	if err != nil {
		return cred.Uid
	}
	for depth := 0; depth < 33; depth++ { // user namespaces nest 32 deep
		id, err := linux.NamespaceID(fd)
		if err != nil || id == h.userNS {
			break
		}
		parent, err := linux.NsParent(fd)
		if err != nil {
			break
		}
		pid, err := linux.NamespaceID(parent)
		if err == nil && pid == h.userNS {
			linux.Close(parent)
			owner, err := linux.NsOwnerUID(fd)
			linux.Close(fd)
			if err != nil {
				return cred.Uid
			}
			return owner
		}
		linux.Close(fd)
		fd = parent
	}
	linux.Close(fd)
	return cred.Uid
}

// cgroupOf returns the cgroup v2 path and id of the process behind pidfd:
// from PIDFD_GET_INFO (Linux >= 6.13), else from /proc/PID/cgroup,
// accepted only if the pidfd shows the process still alive after the read.
// pid is the process's pid, or 0 to take it from the pidfd. The id is 0
// where only the path is known.
func cgroupOf(pidfd, pid int, r *cgroup.Resolver) (string, uint64, error) {
	info, err := linux.PidfdGetInfo(pidfd, unix.PIDFD_INFO_CGROUPID)
	if oldKernel.Load() {
		info, err = nil, unix.ENOTTY
	}
	if err == nil && info.Mask&unix.PIDFD_INFO_CGROUPID != 0 {
		p, perr := r.PathByID(info.Cgroupid)
		if perr == nil {
			return p, info.Cgroupid, nil
		}
		// open_by_handle_at needs CAP_DAC_READ_SEARCH in the initial user
		// namespace, which a containerized agent (systemd-nspawn) lacks:
		// fall back to /proc, checked against the pidfd below.
		if !errors.Is(perr, unix.EPERM) {
			return "", 0, fmt.Errorf("cgroup of pid %d: %w", info.Pid, perr)
		}
	}
	switch {
	case err == nil, errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EINVAL):
		if pid == 0 {
			if pid, err = linux.PidfdPid(pidfd); err != nil {
				return "", 0, err
			}
		}
		p, err := r.ProcPath(pid)
		if err != nil {
			return "", 0, err
		}
		if err := stillAlive(pidfd, pid); err != nil {
			return "", 0, err
		}
		return p, 0, nil
	}
	return "", 0, fmt.Errorf("identify process %d: %w", pid, err)
}
