package agent

import (
	"errors"
	"fmt"
	"strings"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// register records a container for the OCI hook. The caller must be root
// outside any registered container; the container's cgroup comes from the
// pidfd of its init process that the request carries (owned here), never
// from the request. The reply says, for each requested entry, whether the
// container may acquire it now; with FlagRequired any refusal refuses the
// registration.
func (c *conn) register(cfg *policy.Config, attrs []byte, pidfd int, out []byte) (proto.Builder, error) {
	fail := func(err error) (proto.Builder, error) {
		if pidfd >= 0 {
			linux.Close(pidfd)
		}
		return proto.Builder{}, err
	}
	if pidfd < 0 {
		return fail(proto.Errorf(proto.CodeInvalidRequest, "register needs the pidfd of the container's init process"))
	}
	var ct container
	var flags uint32
	var refs [][2]string
	var haveID, haveName, haveFlags bool
	var err error
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch {
		case t == proto.AttrContainerID && !haveID:
			ct.id, haveID = string(v), true
			err = proto.ValidContainerName(ct.id)
		case t == proto.AttrContainerName && !haveName:
			ct.name, haveName = string(v), true
			err = proto.ValidContainerName(ct.name)
		case t == proto.AttrFlags && !haveFlags:
			flags, err = proto.U32(v)
			haveFlags = true
		case t == proto.AttrRef && len(refs) < proto.MaxRefs:
			var owner, name string
			if owner, name, err = proto.SplitRef(string(v)); err == nil {
				refs = append(refs, [2]string{owner, name})
			}
		default:
			err = badAttr(proto.OpRegister, t)
		}
	}
	if err == nil {
		err = it.Err()
	}
	switch {
	case err != nil:
	case !haveID:
		err = errors.New("register needs a container id")
	case flags&^proto.FlagRequired != 0:
		err = fmt.Errorf("unknown register flags %#x", flags)
	}
	if err != nil {
		var perr *proto.Error
		if !errors.As(err, &perr) {
			err = &proto.Error{Code: proto.CodeInvalidRequest, Message: err.Error()}
		}
		return fail(err)
	}
	if err := c.mayManageContainers(); err != nil {
		return fail(err)
	}
	ct.cgroup, err = cgroupOf(pidfd, 0, c.srv.resolver)
	if err != nil {
		return fail(proto.Errorf(proto.CodeInvalidRequest, "container %s: its init process: %v", ct.id, err))
	}
	if within(c.id.Cgroup, ct.cgroup) {
		// Registering "/" or the runtime's own cgroup would rename the
		// caller and everything beside it.
		return fail(proto.Errorf(proto.CodePermissionDenied, "container %s: its cgroup %s holds the registering process too; the runtime must give the container a cgroup of its own", ct.id, ct.cgroup))
	}
	if err := c.containerCgroupOK(ct.cgroup, pidfd); err != nil {
		return fail(proto.Errorf(proto.CodePermissionDenied, "container %s: %v", ct.id, err))
	}
	ct.identity = "container:" + ct.id
	if ct.name != "" {
		ct.identity = "container:" + ct.name
		ct.aliases = []string{"container:" + ct.id}
	}

	// What may the container acquire now?
	names := append([]string{ct.identity}, ct.aliases...)
	m := proto.NewMessage(out, proto.OpRegister, proto.CodeOK)
	m.String(proto.AttrIdentity, ct.identity)
	m.String(proto.AttrCgroup, ct.cgroup)
	var denied []string
	for _, r := range refs {
		code, msg := c.canAcquire(cfg, names, r[0], r[1])
		start := m.Begin(proto.AttrResult)
		m.String(proto.AttrOwner, r[0])
		m.String(proto.AttrName, r[1])
		m.U32(proto.AttrCode, uint32(code))
		if code != proto.CodeOK {
			m.String(proto.AttrMessage, msg)
			denied = append(denied, msg)
			c.srv.log.Info("container may not acquire a requested entry", "id", ct.id, "identity", ct.identity, "entry", r[0]+":"+r[1], "reason", msg)
		}
		m.End(start)
	}
	if len(denied) > 0 && flags&proto.FlagRequired != 0 {
		return fail(proto.Errorf(proto.CodePermissionDenied, "container %s requires entries it cannot acquire: %s", ct.id, strings.Join(denied, "; ")))
	}
	ct.pidfd, pidfd = pidfd, -1
	if err := c.srv.reg.add(&ct); err != nil {
		return proto.Builder{}, err
	}
	c.srv.log.Info("container registered", "id", ct.id, "identity", ct.identity, "cgroup", ct.cgroup, "requested", len(refs), "denied", len(denied))
	return m, nil
}

// containerCgroupOK refuses cgroups that are not a fresh container's: one
// inside a systemd service (its processes are the service), one with any
// process but the container's init (createRuntime runs before the workload
// starts), or one above or below another registered container.
func (c *conn) containerCgroupOK(p string, pidfd int) error {
	if id, _ := cgroup.Owner(p); strings.HasSuffix(id, ".service") {
		return fmt.Errorf("cgroup %s belongs to %s: a service cannot be registered as a container", p, id)
	}
	pid, err := linux.PidfdPid(pidfd)
	if err != nil {
		return err
	}
	procs, err := cgroup.Procs(c.srv.resolver.Abs(p))
	if err != nil {
		return err
	}
	if len(procs) != 1 || procs[0] != pid {
		return fmt.Errorf("cgroup %s holds processes %v besides the container's init %d", p, procs, pid)
	}
	if o := c.srv.reg.overlapping(p); o != "" {
		return fmt.Errorf("cgroup %s is above or below the cgroup of registered container %s", p, o)
	}
	return nil
}

// canAcquire answers, without handing out anything, whether a consumer
// known by names could acquire owner:name now.
func (c *conn) canAcquire(cfg *policy.Config, names []string, owner, name string) (proto.Code, string) {
	granted := false
	for _, n := range names {
		if n == owner || cfg.Allowed(n, owner, name) {
			granted = true
			break
		}
	}
	if !granted {
		return proto.CodePermissionDenied, fmt.Sprintf("%s may not acquire %s:%s: no grant in policy (permission-denied)", names[0], owner, name)
	}
	e := c.srv.store.acquire(owner, name)
	if e == nil {
		return proto.CodeNotFound, fmt.Sprintf("%s:%s is not published (not-found)", owner, name)
	}
	defer e.release()
	if owner != names[0] && !e.admits(names) {
		return proto.CodePermissionDenied, fmt.Sprintf("%s may not acquire %s:%s: the owner's allow list excludes it (permission-denied)", names[0], owner, name)
	}
	return proto.CodeOK, ""
}

// unregister forgets a container (the hook's poststop) and drops its
// unpinned entries.
func (c *conn) unregister(attrs []byte) error {
	var id string
	var haveID bool
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		if t != proto.AttrContainerID || haveID {
			return badAttr(proto.OpUnregister, t)
		}
		id, haveID = string(v), true
	}
	if err := it.Err(); err != nil {
		return err
	}
	if !haveID {
		return proto.Errorf(proto.CodeInvalidRequest, "unregister needs a container id")
	}
	if err := c.mayManageContainers(); err != nil {
		return err
	}
	ct := c.srv.reg.remove(id)
	if ct == nil {
		return proto.Errorf(proto.CodeNotFound, "container %s is not registered", id)
	}
	n := c.srv.store.dropOwned(ct.cgroup)
	c.srv.log.Info("container unregistered", "id", ct.id, "identity", ct.identity, "dropped", n)
	return nil
}

// mayManageContainers admits root outside registered containers: the OCI
// hook runs as root in the runtime's namespaces. A process inside a
// registered container, even as root, may not register or unregister.
func (c *conn) mayManageContainers() error {
	switch {
	case c.id.UID != 0:
		return proto.Errorf(proto.CodePermissionDenied, "only root (the OCI hook) may register containers")
	case c.id.Container != "":
		return proto.Errorf(proto.CodePermissionDenied, "%s may not register containers: it runs in one", c.id.Name)
	}
	return nil
}

// containerExited is the registry's report that a container's init
// process exited.
func (s *Server) containerExited(ct *container) {
	n := s.store.dropOwned(ct.cgroup)
	s.log.Info("container init exited; unregistered", "id", ct.id, "identity", ct.identity, "dropped", n)
}
