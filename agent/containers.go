package agent

import (
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// container is a container the OCI hook registered: its identity, its
// cgroup (taken from its init process by the agent, never from the
// request), and that init process, held by pidfd so that its exit
// unregisters the container even when the runtime never runs poststop.
type container struct {
	id, name string
	identity string   // "container:NAME", or "container:ID" without a name
	aliases  []string // "container:ID" when named
	cgroup   string
	pidfd    int
}

func (c *container) names() []string { return append([]string{c.identity}, c.aliases...) }

// registry holds the registered containers. One goroutine waits on an
// epoll set of their pidfds; there is no goroutine or timer per container.
type registry struct {
	onExit func(*container)

	mu       sync.RWMutex
	byCgroup map[string]*container
	byID     map[string]*container
	byIdent  map[string]*container // by identity and aliases
	byFD     map[int]*container

	ep   int // epoll of pidfds and wake
	wake int // eventfd that stops run
	done chan struct{}
}

func newRegistry(onExit func(*container)) (*registry, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		linux.Close(ep)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		linux.Close(ep)
		linux.Close(wake)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	r := &registry{
		onExit:   onExit,
		byCgroup: make(map[string]*container),
		byID:     make(map[string]*container),
		byIdent:  make(map[string]*container),
		byFD:     make(map[int]*container),
		ep:       ep,
		wake:     wake,
		done:     make(chan struct{}),
	}
	go r.run()
	return r, nil
}

// lookup returns the container whose cgroup is p or an ancestor of p.
func (r *registry) lookup(p string) *container {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.byCgroup) == 0 {
		return nil
	}
	for ok := true; ok; p, ok = cgroup.Parent(p) {
		if c := r.byCgroup[p]; c != nil {
			return c
		}
	}
	return nil
}

// overlapping returns the id of a registered container whose cgroup is an
// ancestor or a descendant of p (not p itself), or "".
func (r *registry) overlapping(p string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for cg, c := range r.byCgroup {
		if cg != p && (within(cg, p) || within(p, cg)) {
			return c.id
		}
	}
	return ""
}

// add registers c, taking ownership of c.pidfd whatever the outcome. The
// same id registered again from the same cgroup (prestart and createRuntime
// both configured, a retried hook) keeps one registration with the newer
// pidfd. A name, id or cgroup held by another container is refused.
func (r *registry) add(c *container) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.byID[c.id]
	var err error
	switch {
	case old != nil && old.cgroup != c.cgroup:
		err = proto.Errorf(proto.CodeExists, "container id %s is registered with cgroup %s", c.id, old.cgroup)
	case r.byCgroup[c.cgroup] != nil && r.byCgroup[c.cgroup].id != c.id:
		err = proto.Errorf(proto.CodeExists, "cgroup %s is registered to container %s", c.cgroup, r.byCgroup[c.cgroup].id)
	case old != nil && old.name != c.name:
		err = proto.Errorf(proto.CodeExists, "container %s is registered under the name %q", c.id, old.name)
	}
	for _, n := range c.names() {
		if o := r.byIdent[n]; err == nil && o != nil && o.id != c.id {
			err = proto.Errorf(proto.CodeExists, "identity %s is registered to container %s", n, o.id)
		}
	}
	if err != nil {
		linux.Close(c.pidfd)
		return err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(c.pidfd)}
	if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, c.pidfd, &ev); err != nil {
		linux.Close(c.pidfd)
		return os.NewSyscallError("epoll_ctl", err)
	}
	if old != nil {
		r.removeLocked(old)
	}
	r.byID[c.id] = c
	r.byCgroup[c.cgroup] = c
	r.byFD[c.pidfd] = c
	for _, n := range c.names() {
		r.byIdent[n] = c
	}
	return nil
}

// remove unregisters the container with id and returns it, or nil.
func (r *registry) remove(id string) *container {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.byID[id]
	if c != nil {
		r.removeLocked(c)
	}
	return c
}

func (r *registry) removeLocked(c *container) {
	delete(r.byID, c.id)
	delete(r.byCgroup, c.cgroup)
	delete(r.byFD, c.pidfd)
	for _, n := range c.names() {
		if r.byIdent[n] == c {
			delete(r.byIdent, n)
		}
	}
	unix.EpollCtl(r.ep, unix.EPOLL_CTL_DEL, c.pidfd, nil)
	linux.Close(c.pidfd)
	c.pidfd = -1
}

func (r *registry) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byID)
}

// run waits for registered init processes to exit.
func (r *registry) run() {
	defer close(r.done)
	events := make([]unix.EpollEvent, 32)
	var exited []*container
	for {
		n, err := unix.EpollWait(r.ep, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		exited = exited[:0]
		r.mu.Lock()
		for _, ev := range events[:n] {
			if int(ev.Fd) == r.wake {
				r.mu.Unlock()
				return
			}
			// The fd number may belong to a newer registration by now:
			// act only on an init that really exited.
			if c := r.byFD[int(ev.Fd)]; c != nil {
				if alive, err := linux.PidfdAlive(c.pidfd); err == nil && alive {
					continue
				}
				r.removeLocked(c)
				exited = append(exited, c)
			}
		}
		r.mu.Unlock()
		for _, c := range exited {
			r.onExit(c)
		}
	}
}

// close stops the registry and releases every pidfd.
func (r *registry) close() {
	var one [8]byte
	one[0] = 1
	unix.Write(r.wake, one[:])
	<-r.done
	r.mu.Lock()
	for _, c := range r.byID {
		r.removeLocked(c)
	}
	r.mu.Unlock()
	linux.Close(r.ep)
	linux.Close(r.wake)
}
