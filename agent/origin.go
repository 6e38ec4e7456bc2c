package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/nsenter"
)

// The agent runs in a private mount namespace of its own (privateMountNS),
// but directories it clones for per-consumer grants (open_tree) must be
// cloned in the namespace their mounts belong to: the one the agent was
// started in, the host's. The agent keeps an fd of that namespace: opened
// before the re-exec into the private one and passed across it (its
// number in originMarker, with the pid), and across a SIGUSR2 hand-off
// under originName. Under systemd a restart starts in the host's
// namespace again, so it is never kept in the fd store.

// originMarker carries "FD.PID" across the re-exec into the private
// namespace.
const originMarker = "CAPD_ORIGIN_MNTNS"

// originName names the origin namespace's fd in a hand-off.
const originName = "capd-origin-mntns"

// openOrigin opens the calling thread's mount namespace without
// FD_CLOEXEC, for the re-exec into the private one, and returns the
// marker to put in its environment; -1 and "" if it cannot.
func openOrigin() (int, string) {
	fd, err := linux.OpenOwnMountNS()
	if err != nil {
		return -1, ""
	}
	return fd, originMarker + "=" + strconv.Itoa(fd) + "." + strconv.Itoa(os.Getpid())
}

// takeOrigin returns the origin namespace's fd the previous exec left
// (FD_CLOEXEC set now), or -1; it unsets the marker.
func takeOrigin() int {
	v := os.Getenv(originMarker)
	os.Unsetenv(originMarker)
	fdS, pid, ok := strings.Cut(v, ".")
	if !ok || pid != strconv.Itoa(os.Getpid()) {
		return -1
	}
	fd, err := strconv.Atoi(fdS)
	if err != nil || fd < 3 || linux.CheckMountNS(fd) != nil {
		return -1
	}
	if err := linux.SetCloexec(fd); err != nil {
		return -1
	}
	return fd
}

// cloneTree clones a directory or file for a grant: in the agent's own
// namespace if the mount is there, else in the origin namespace.
func (s *Server) cloneTree(f int, attrs uint64, dir bool) (int, error) {
	fd, err := linux.Detached(f, attrs, dir)
	if err == nil || !errors.Is(err, unix.EINVAL) || s.origin < 0 {
		return fd, err
	}
	err = nsenter.MountNS(s.origin, func() (err error) {
		fd, err = linux.Detached(f, attrs, dir)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("in the agent's origin mount namespace: %w", err)
	}
	return fd, nil
}

// adoptOrigin keeps the origin namespace: fd, from the re-exec into the
// private namespace, or else the one a hand-off passed among stored,
// which it returns without it. -1 and nothing passed: the agent's own
// namespace is the one it was started in (or it could not leave it).
func (s *Server) adoptOrigin(fd int, stored []Stored) []Stored {
	out := stored[:0]
	for _, st := range stored {
		if st.Name != originName {
			out = append(out, st)
			continue
		}
		if fd < 0 && linux.CheckMountNS(st.FD) == nil {
			fd = st.FD
		} else {
			linux.Close(st.FD)
		}
	}
	s.origin = fd
	return out
}
