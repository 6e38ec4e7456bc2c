// Package fdstore keeps fds in systemd's file descriptor store of the
// running service (FDSTORE=1, sd_pid_notify_with_fds(3)): systemd holds
// them across restarts of the service, crashes included, and passes them
// back at start as LISTEN_FDS with LISTEN_FDNAMES. go-systemd's daemon
// package sends notifications but cannot attach fds; this is that one
// sendmsg, and nothing else.
//
// Fd ownership: a Store owns one socket, closed by Close. Add sends a copy
// of the caller's fd; the caller keeps its own.
package fdstore

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/linux"
)

// Store talks to systemd's notification socket.
type Store struct {
	addr unix.SockaddrUnix
	fd   int
}

// Open returns a Store for $NOTIFY_SOCKET, or nil when it is unset (not run
// by systemd).
func Open() (*Store, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil, nil
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	// An '@' prefix names an abstract socket, as x/sys/unix understands.
	s := &Store{addr: unix.SockaddrUnix{Name: path}, fd: fd}
	if err := unix.Connect(fd, &s.addr); err != nil {
		linux.Close(fd)
		return nil, fmt.Errorf("connect to NOTIFY_SOCKET %s: %w", path, os.NewSyscallError("connect", err))
	}
	return s, nil
}

// Close releases the socket.
func (s *Store) Close() error { return linux.Close(s.fd) }

// Add stores a copy of fd under name (not polled: systemd keeps it even
// if it hangs up). name is at most 255 characters of [A-Za-z0-9_.-].
func (s *Store) Add(name string, fd int) error {
	if err := validName(name); err != nil {
		return err
	}
	return s.send("FDSTORE=1\nFDNAME="+name+"\nFDPOLL=0\n", fd)
}

// Remove drops every stored fd called name.
func (s *Store) Remove(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	return s.send("FDSTOREREMOVE=1\nFDNAME="+name+"\n", -1)
}

// Barrier returns once systemd has processed every notification sent
// before it (BARRIER=1 with the write end of a pipe, which systemd closes).
func (s *Store) Barrier(timeout time.Duration) error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return os.NewSyscallError("pipe2", err)
	}
	defer linux.Close(p[0])
	err := s.send("BARRIER=1\n", p[1])
	linux.Close(p[1])
	if err != nil {
		return err
	}
	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLHUP}}
	deadline := time.Now().Add(timeout)
	for {
		n, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds()))
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return os.NewSyscallError("poll", err)
		case n == 0:
			return fmt.Errorf("systemd did not answer the barrier within %v", timeout)
		}
		return nil
	}
}

func (s *Store) send(msg string, fd int) error {
	var err error
	if fd >= 0 {
		err = fdpass.Send(s.fd, []byte(msg), fd)
	} else {
		err = fdpass.Send(s.fd, []byte(msg))
	}
	if err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	return nil
}

func validName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("fd store name %q: want 1 to 255 characters", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("fd store name %q: only letters, digits and _.- are allowed", name)
		}
	}
	return nil
}
