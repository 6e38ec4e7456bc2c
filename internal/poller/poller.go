// Package poller waits for one fd to become readable until it is told to
// stop: the loop shape of the agent's accept loop and of the cgroup
// watcher's inotify reader. poll(2) on two fds (the watched one and an
// eventfd that Stop writes) is all either needs; an epoll instance would
// add an fd and two system calls per wait for nothing.
//
// Fd ownership: Wait borrows the fd it waits for (its owner closes it,
// after the waiting goroutine is gone); a Poller owns its eventfd, which
// Close closes. Stop and Wait may be called from different goroutines; Close only
// once nothing waits any more.
package poller

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// ErrStopped is what Wait returns once Stop was called.
var ErrStopped = errors.New("poller stopped")

// Poller is a wait that Stop ends.
type Poller struct {
	wake linux.FD
}

// New returns a Poller.
func New() (*Poller, error) {
	w, err := linux.Eventfd(0, 0)
	if err != nil {
		return nil, err
	}
	p := &Poller{}
	p.wake.Own(w)
	return p, nil
}

// Wait blocks until fd is readable (nil), Stop is called (ErrStopped, now
// and at every later call), or fd fails (an error naming the poll events:
// a listening socket shut down, an fd closed under it).
func (p *Poller) Wait(fd int) error {
	fds := [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(p.wake.Int()), Events: unix.POLLIN}}
	if _, err := linux.Poll(fds[:], -1); err != nil {
		return err
	}
	switch {
	case fds[1].Revents != 0:
		return ErrStopped
	case fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0:
		return fmt.Errorf("fd %d failed (poll events %#x)", fd, fds[0].Revents)
	}
	return nil
}

// Stop makes every Wait, running or later, return ErrStopped.
func (p *Poller) Stop() {
	var one [8]byte
	one[0] = 1
	linux.Write(p.wake.Int(), one[:])
}

// Close releases the eventfd; no Wait may run or follow.
func (p *Poller) Close() error { return p.wake.Close() }
