package registry

import (
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/capd-dev/capd/cgroup"
)

// Container is a registered container.
type Container struct {
	ID, Name string
	Pod      string   // "NAMESPACE/POD" for a Kubernetes pod's container, else ""
	Identity string   // "pod:NAMESPACE/POD/NAME", "container:NAME", or "container:ID" without a name
	Aliases  []string // "pod:NAMESPACE/POD" (shared by the pod's containers), or "container:ID" when named
	Cgroup   string
	CgroupID uint64 // inode of the cgroup's directory: a cgroup made again at the path is another
	epoch    uint64 // the cgroup's watch epoch at registration
}

// New returns a container with id and name (may be empty) and the identity
// and aliases they give, in cgroup p (cgroupID 0: whatever is at p now).
func New(id, name, p string, cgroupID uint64) *Container {
	c := &Container{ID: id, Name: name, Identity: "container:" + id, Cgroup: p, CgroupID: cgroupID}
	if name != "" {
		c.Identity, c.Aliases = "container:"+name, []string{"container:" + id}
	}
	return c
}

// NewInPod returns the container name of pod ("NAMESPACE/POD"), with id,
// in cgroup p: "pod:NAMESPACE/POD/NAME", with the pod as an alias. Not
// "container:ID": pod creators choose how often they get a random id, and
// a grant such as container:db* meant for named containers would match
// one sooner or later.
func NewInPod(id, pod, name, p string, cgroupID uint64) *Container {
	return &Container{ID: id, Name: name, Pod: pod, Identity: "pod:" + pod + "/" + name,
		Aliases: []string{"pod:" + pod}, Cgroup: p, CgroupID: cgroupID}
}

// names are the names only this container may have: its identity and
// aliases, except the pod's, which its containers share.
func (c *Container) names() []string {
	out := []string{c.Identity}
	for _, a := range c.Aliases {
		if c.Pod == "" || a != "pod:"+c.Pod {
			out = append(out, a)
		}
	}
	return out
}

// Watcher follows registered cgroups (cgroup.Watcher is one).
type Watcher interface {
	Add(p string) (epoch uint64, populated, recreated bool, err error)
	Remove(p string)
}

// Cgroups reads what a cgroup path is now.
type Cgroups interface {
	// ID is the inode of cgroup p's directory.
	ID(p string) (uint64, error)
	// Populated reports whether cgroup p or one below it has a process.
	Populated(p string) (bool, error)
}

// Registry holds the registered containers.
type Registry struct {
	watch   Watcher
	cgroups Cgroups

	mu       sync.RWMutex
	byCgroup map[string]*Container
	byID     map[string]*Container
	byIdent  map[string]*Container // by identity and aliases
	changes  uint64                // counts changes, for the mirror
}

// NewRegistry returns an empty registry.
func NewRegistry(w Watcher, cg Cgroups) *Registry {
	return &Registry{
		watch:    w,
		cgroups:  cg,
		byCgroup: make(map[string]*Container),
		byID:     make(map[string]*Container),
		byIdent:  make(map[string]*Container),
	}
}

// Lookup returns the container whose cgroup is p or an ancestor of p, or
// nil.
func (r *Registry) Lookup(p string) *Container {
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

// Overlapping returns the id of a registered container whose cgroup is an
// ancestor or a descendant of p (not p itself), or "".
func (r *Registry) Overlapping(p string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for cg, c := range r.byCgroup {
		if cg != p && (cgroup.Within(cg, p) || cgroup.Within(p, cg)) {
			return c.ID
		}
	}
	return ""
}

// Add registers c and starts following its cgroup. The same id registered
// again from the same cgroup (prestart and createRuntime both configured,
// a retried hook) keeps one registration. A name, id or cgroup held by
// another container is refused, and so is a cgroup that has no process
// left or is not the one c.CgroupID names.
//
// The watch is taken under the registry's lock: an emptying the watcher
// reports meanwhile (Emptied, which takes the lock) then finds the
// registration it concerns, instead of finding nothing and leaving a
// registration that outlives its cgroup.
func (r *Registry) Add(c *Container) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	epoch, populated, recreated, err := r.watch.Add(c.Cgroup)
	if err != nil {
		return err
	}
	var id uint64
	if populated {
		id, err = r.cgroups.ID(c.Cgroup)
	}
	switch {
	case !populated:
		err = errorf(ErrGone, "container %s: cgroup %s has no processes left", c.ID, c.Cgroup)
	case err != nil:
		err = fmt.Errorf("cgroup %s: %w", c.Cgroup, err)
	case c.CgroupID != 0 && id != c.CgroupID:
		err = errorf(ErrGone, "container %s: cgroup %s is not the one registered (it was removed and created again)", c.ID, c.Cgroup)
	}
	if err != nil {
		r.watch.Remove(c.Cgroup)
		return err
	}
	c.CgroupID, c.epoch = id, epoch

	if o := r.byCgroup[c.Cgroup]; o != nil && (recreated || o.CgroupID != c.CgroupID) {
		// A stale registration of an earlier cgroup at the same path.
		r.removeLocked(o)
	}
	old := r.byID[c.ID]
	switch {
	case old != nil && old.Cgroup != c.Cgroup:
		err = errorf(ErrConflict, "container id %s is registered with cgroup %s", c.ID, old.Cgroup)
	case r.byCgroup[c.Cgroup] != nil && r.byCgroup[c.Cgroup].ID != c.ID:
		err = errorf(ErrConflict, "cgroup %s is registered to container %s", c.Cgroup, r.byCgroup[c.Cgroup].ID)
	case old != nil && old.Name != c.Name:
		err = errorf(ErrConflict, "container %s is registered under the name %q", c.ID, old.Name)
	case old != nil && (old.Identity != c.Identity || !slices.Equal(old.Aliases, c.Aliases)):
		// Registered again (a retried hook, a plugin after a restart) it
		// keeps the identity it has: a second source cannot rename it.
		err = errorf(ErrConflict, "container %s is registered as %s", c.ID, old.Identity)
	}
	for _, n := range c.names() {
		if o := r.byIdent[n]; err == nil && o != nil && o.ID != c.ID {
			err = errorf(ErrConflict, "identity %s is registered to container %s", n, o.ID)
		}
	}
	if err != nil {
		r.watch.Remove(c.Cgroup)
		return err
	}
	if old != nil {
		r.removeLocked(old)
	}
	r.byID[c.ID] = c
	r.byCgroup[c.Cgroup] = c
	for _, n := range c.names() {
		r.byIdent[n] = c
	}
	r.changes++
	return nil
}

// Unregister forgets the container with id, if its cgroup has no process
// left (the hook's poststop: the runtime has killed everything). A live
// container stays: a poststop of another container with the same id, from
// another runtime root, cannot end it.
func (r *Registry) Unregister(id string) (*Container, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.byID[id]
	if c == nil {
		return nil, errorf(ErrNotFound, "container %s is not registered", id)
	}
	populated, err := r.cgroups.Populated(c.Cgroup)
	switch {
	case err != nil:
		return nil, fmt.Errorf("container %s: %w", id, err)
	case populated:
		return nil, errorf(ErrStillRunning, "container %s (cgroup %s): the container still has processes in its cgroup; it stays registered until they are gone", id, c.Cgroup)
	}
	r.removeLocked(c)
	return c, nil
}

// Emptied ends the registration of cgroup p if it was made before the
// emptying the watcher numbered epoch, and returns it.
func (r *Registry) Emptied(p string, epoch uint64) *Container {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.byCgroup[p]
	if c == nil || c.epoch >= epoch {
		return nil
	}
	r.removeLocked(c)
	return c
}

func (r *Registry) removeLocked(c *Container) {
	r.changes++
	delete(r.byID, c.ID)
	if r.byCgroup[c.Cgroup] == c {
		delete(r.byCgroup, c.Cgroup)
	}
	for _, n := range c.names() {
		if r.byIdent[n] == c {
			delete(r.byIdent, n)
		}
	}
	r.watch.Remove(c.Cgroup)
}

// Changes counts the changes to the registrations so far: the mirror
// writes them again only when it moved.
func (r *Registry) Changes() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.changes
}

// Len returns the number of registered containers.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byID)
}

// All returns a copy of every registration, sorted by id.
func (r *Registry) All() []Container {
	r.mu.RLock()
	out := make([]Container, 0, len(r.byID))
	for _, c := range r.byID {
		out = append(out, *c)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Close forgets every registration.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.byID {
		r.removeLocked(c)
	}
}
