package agent

import (
	"fmt"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// container is a container the OCI hook registered: its identity and its
// cgroup, taken from its init process by the agent (never from the
// request). The registration lasts while any process remains in that
// cgroup or below it: the init's exit alone ends nothing, so a process
// that outlives the init keeps the container's identity and never becomes
// a host process.
type container struct {
	id, name string
	identity string   // "container:NAME", or "container:ID" without a name
	aliases  []string // "container:ID" when named
	cgroup   string
	cgroupID uint64 // inode of the cgroup's directory: a cgroup made again at the path is another
	epoch    uint64 // the cgroup's watch epoch at registration
}

func (c *container) names() []string { return append([]string{c.identity}, c.aliases...) }

// registry holds the registered containers. It owns no fds: their
// lifetime is their cgroup's, which the store's cgroup watcher reports
// (Server.cgroupEmptied calls emptied); there is no goroutine, timer or fd
// per container.
type registry struct {
	watch *cgroup.Watcher
	abs   func(string) string // cgroup path -> directory

	mu       sync.RWMutex
	byCgroup map[string]*container
	byID     map[string]*container
	byIdent  map[string]*container // by identity and aliases
}

func newRegistry(w *cgroup.Watcher, abs func(string) string) *registry {
	return &registry{
		watch:    w,
		abs:      abs,
		byCgroup: make(map[string]*container),
		byID:     make(map[string]*container),
		byIdent:  make(map[string]*container),
	}
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

// cgroupID returns the inode of cgroup p's directory.
func (r *registry) cgroupID(p string) (uint64, error) {
	var st unix.Stat_t
	if err := linux.Stat(r.abs(p), &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", p, err)
	}
	return st.Ino, nil
}

// add registers c and starts following its cgroup. The same id registered
// again from the same cgroup (prestart and createRuntime both configured,
// a retried hook) keeps one registration. A name, id or cgroup held by
// another container is refused, and so is a cgroup that has no process
// left or is not the one c.cgroupID names.
func (r *registry) add(c *container) error {
	epoch, populated, recreated, err := r.watch.Add(c.cgroup)
	if err != nil {
		return err
	}
	id, err := r.cgroupID(c.cgroup)
	switch {
	case err != nil:
	case !populated:
		err = proto.Errorf(proto.CodeInvalidRequest, "container %s: cgroup %s has no processes left", c.id, c.cgroup)
	case c.cgroupID != 0 && id != c.cgroupID:
		err = proto.Errorf(proto.CodeInvalidRequest, "container %s: cgroup %s is not the one registered (it was removed and created again)", c.id, c.cgroup)
	}
	if err != nil {
		r.watch.Remove(c.cgroup)
		return err
	}
	c.cgroupID, c.epoch = id, epoch

	r.mu.Lock()
	defer r.mu.Unlock()
	if o := r.byCgroup[c.cgroup]; o != nil && (recreated || o.cgroupID != c.cgroupID) {
		// A stale registration of an earlier cgroup at the same path.
		r.removeLocked(o)
	}
	old := r.byID[c.id]
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
		r.watch.Remove(c.cgroup)
		return err
	}
	if old != nil {
		r.removeLocked(old)
	}
	r.byID[c.id] = c
	r.byCgroup[c.cgroup] = c
	for _, n := range c.names() {
		r.byIdent[n] = c
	}
	return nil
}

// errStillRunning refuses to unregister a container that has processes.
var errStillRunning = proto.Errorf(proto.CodePermissionDenied, "the container still has processes in its cgroup; it stays registered until they are gone")

// unregister forgets the container with id, if its cgroup has no process
// left (the hook's poststop: the runtime has killed everything). A live
// container stays: a poststop of another container with the same id, from
// another runtime root, cannot end it.
func (r *registry) unregister(id string) (*container, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.byID[id]
	if c == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "container %s is not registered", id)
	}
	if populated, err := cgroup.Populated(r.abs(c.cgroup)); err != nil || populated {
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", id, err)
		}
		return nil, fmt.Errorf("container %s (cgroup %s): %w", id, c.cgroup, errStillRunning)
	}
	r.removeLocked(c)
	return c, nil
}

// emptied ends the registration of cgroup p if it was made before the
// emptying the watcher numbered epoch, and returns it.
func (r *registry) emptied(p string, epoch uint64) *container {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.byCgroup[p]
	if c == nil || c.epoch >= epoch {
		return nil
	}
	r.removeLocked(c)
	return c
}

func (r *registry) removeLocked(c *container) {
	delete(r.byID, c.id)
	if r.byCgroup[c.cgroup] == c {
		delete(r.byCgroup, c.cgroup)
	}
	for _, n := range c.names() {
		if r.byIdent[n] == c {
			delete(r.byIdent, n)
		}
	}
	r.watch.Remove(c.cgroup)
}

func (r *registry) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byID)
}

// records describes the registrations for persistence, sorted by id.
func (r *registry) records() []ctrRecord {
	r.mu.RLock()
	out := make([]ctrRecord, 0, len(r.byID))
	for _, c := range r.byID {
		out = append(out, ctrRecord{ID: c.id, Name: c.name, Identity: c.identity, Aliases: c.aliases, Cgroup: c.cgroup, CgroupID: c.cgroupID})
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// close forgets every registration.
func (r *registry) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.byID {
		r.removeLocked(c)
	}
}
