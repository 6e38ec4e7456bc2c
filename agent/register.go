package agent

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// register records a container for the OCI hook. The caller must be a host
// administrator; the container's cgroup comes from the pidfd of its init
// process that the request carries (in reqFD, which the connection
// closes), never from the request. The reply says, for each requested entry,
// whether the container may acquire it now; with FlagRequired any refusal
// refuses the registration. With FlagCheck the request carries no fd and
// registers nothing: the reply only answers for the entries (an NRI
// plugin asks before the container has a process). A pod's container
// (AttrPod) is "pod:NAMESPACE/POD/NAME".
func (c *conn) register(cfg *policy.Config, attrs []byte, reqFD *linux.FD, out []byte) (proto.Builder, error) {
	var id, name, pod, wantCg string
	var flags uint32
	var refs [][2]string
	var haveID, haveName, havePod, haveCg, haveFlags bool
	var err error
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch {
		case t == proto.AttrContainerID && !haveID:
			id, haveID = string(v), true
			err = proto.ValidContainerName(id)
		case t == proto.AttrContainerName && !haveName:
			name, haveName = string(v), true
			err = proto.ValidContainerName(name)
		case t == proto.AttrCgroup && !haveCg:
			wantCg, haveCg = string(v), true
		case t == proto.AttrPod && !havePod:
			pod, havePod = string(v), true
			err = proto.ValidPod(pod)
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
	case havePod && !haveName:
		err = errors.New("register of a pod's container needs its name")
	case flags&^(proto.FlagRequired|proto.FlagCheck|proto.FlagRunning) != 0:
		err = fmt.Errorf("unknown register flags %#x", flags)
	case flags&proto.FlagCheck != 0 && reqFD.Valid():
		err = errors.New("register with check takes no fd")
	case flags&proto.FlagCheck == 0 && !reqFD.Valid():
		err = errors.New("register needs the pidfd of the container's init process")
	case flags&proto.FlagRunning != 0 && !haveCg:
		// Without the single-process check, the runtime's word on where
		// the container is must agree with the kernel's: a pid recycled
		// between the runtime's report and the pidfd is refused.
		err = errors.New("register with running needs the cgroup the runtime reports for the container")
	}
	if err != nil {
		var perr *proto.Error
		if !errors.As(err, &perr) {
			err = &proto.Error{Code: proto.CodeInvalidRequest, Message: err.Error()}
		}
		return proto.Builder{}, err
	}
	if err := c.authorize(cfg, policy.ManageContainers, nil); err != nil {
		return proto.Builder{}, err
	}
	newContainer := func(cg string, cgID uint64) *registry.Container {
		if pod != "" {
			return registry.NewInPod(id, pod, name, cg, cgID)
		}
		return registry.New(id, name, cg, cgID)
	}
	ct := newContainer("", 0)
	initUID := ^uint32(0) // unknown before the container has a process: it acquires nothing as an owner
	if flags&proto.FlagCheck == 0 {
		pidfd := reqFD.Int()
		cg, cgID, err := cgroupOf(pidfd, 0, c.srv.resolver)
		if err != nil {
			return proto.Builder{}, proto.Errorf(proto.CodeInvalidRequest, "container %s: its init process: %v", id, err)
		}
		ct = newContainer(cg, cgID)
		if haveCg && wantCg != cg {
			return proto.Builder{}, proto.Errorf(proto.CodePermissionDenied, "container %s: its init is in cgroup %s, not %s, where the runtime put the container", id, cg, wantCg)
		}
		if cgroup.Within(c.peer.Cgroup, ct.Cgroup) {
			// Registering "/" or the runtime's own cgroup would rename the
			// caller and everything beside it.
			return proto.Builder{}, proto.Errorf(proto.CodePermissionDenied, "container %s: its cgroup %s holds the registering process too; the runtime must give the container a cgroup of its own", ct.ID, ct.Cgroup)
		}
		if initUID, err = c.containerCgroupOK(ct.Cgroup, pidfd, flags&proto.FlagRunning != 0); err != nil {
			return proto.Builder{}, proto.Errorf(proto.CodePermissionDenied, "container %s: %v", ct.ID, err)
		}
	}

	// What may the container's init acquire now? It is in a container by
	// definition, with its uid.
	who := &policy.Caller{Identity: ct.Identity, Aliases: ct.Aliases, UID: initUID, Container: ct.ID}
	m := proto.NewMessage(out, proto.OpRegister, proto.CodeOK)
	m.String(proto.AttrIdentity, ct.Identity)
	m.String(proto.AttrCgroup, ct.Cgroup)
	var denied []string
	for _, r := range refs {
		code, msg := c.srv.canAcquire(cfg, who, r[0], r[1])
		start := m.Begin(proto.AttrResult)
		m.String(proto.AttrOwner, r[0])
		m.String(proto.AttrName, r[1])
		m.U32(proto.AttrCode, uint32(code))
		if code != proto.CodeOK {
			m.String(proto.AttrMessage, msg)
			denied = append(denied, msg)
			c.log.Info("container may not acquire a requested entry", "id", ct.ID, "identity", ct.Identity, "entry", r[0]+":"+r[1], "reason", msg)
		}
		m.End(start)
	}
	if len(denied) > 0 && flags&proto.FlagRequired != 0 {
		return proto.Builder{}, proto.Errorf(proto.CodePermissionDenied, "container %s requires entries it cannot acquire: %s", ct.ID, strings.Join(denied, "; "))
	}
	if flags&proto.FlagCheck != 0 {
		return m, nil
	}
	if err := c.srv.reg.Add(ct); err != nil {
		if errors.Is(err, registry.ErrConflict) {
			c.log.Warn("container not registered", "id", ct.ID, "identity", ct.Identity, "reason", err)
		}
		return proto.Builder{}, err
	}
	c.srv.synced()
	c.srv.stats.registrations.Add(1)
	c.log.Info("container registered", "id", ct.ID, "identity", ct.Identity, "cgroup", ct.Cgroup, "requested", len(refs), "denied", len(denied))
	return m, nil
}

// containerCgroupOK refuses cgroups that are not a fresh container's: one
// inside a systemd service (its processes are the service), one with any
// process but the container's init (createRuntime runs before the workload
// starts; unless running: a container registered again after a restart of
// the registering plugin or the agent), or one above or below another
// registered container. It returns the init's uid.
func (c *conn) containerCgroupOK(p string, pidfd int, running bool) (uint32, error) {
	if id, _ := cgroup.Owner(p); strings.HasSuffix(id, ".service") {
		return 0, fmt.Errorf("cgroup %s belongs to %s: a service cannot be registered as a container", p, id)
	}
	pid, err := linux.PidfdPid(pidfd)
	if err != nil {
		return 0, err
	}
	procs, err := cgroup.Procs(c.srv.resolver.Abs(p))
	if err != nil {
		return 0, err
	}
	if !running && (len(procs) != 1 || procs[0] != pid) {
		return 0, fmt.Errorf("cgroup %s holds processes %v besides the container's init %d", p, procs, pid)
	}
	if o := c.srv.reg.Overlapping(p); o != "" {
		return 0, fmt.Errorf("cgroup %s is above or below the cgroup of registered container %s", p, o)
	}
	info, err := linux.PidfdGetInfo(pidfd, unix.PIDFD_INFO_CREDS)
	if err != nil {
		return ^uint32(0), nil // unknown uid: it acquires nothing as an owner
	}
	return info.Euid, nil
}

// canAcquire answers, without handing out anything, whether who could
// acquire owner:name now.
func (s *Server) canAcquire(cfg *policy.Config, who *policy.Caller, owner, name string) (proto.Code, string) {
	e := s.store.Acquire(owner, name)
	if e == nil {
		// Policy first, so that a refusal does not tell whether it exists.
		if d := cfg.Authorize(who, policy.Acquire, &policy.Target{Owner: owner, Name: name, UID: who.UID}); !d.Allowed {
			return proto.CodePermissionDenied, d.Reason + " (permission-denied)"
		}
		return proto.CodeNotFound, fmt.Sprintf("%s:%s is not published (not-found)", owner, name)
	}
	defer s.store.Release(e)
	if d := cfg.Authorize(who, policy.Acquire, e.Target()); !d.Allowed {
		return proto.CodePermissionDenied, d.Reason + " (permission-denied)"
	}
	return proto.CodeOK, ""
}

// unregister forgets a container (the hook's poststop) and drops its
// unpinned entries; a container that still has processes stays.
func (c *conn) unregister(cfg *policy.Config, attrs []byte) error {
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
	if err := c.authorize(cfg, policy.ManageContainers, nil); err != nil {
		return err
	}
	ct, err := c.srv.reg.Unregister(id)
	if err != nil {
		if errors.Is(err, registry.ErrStillRunning) {
			c.log.Warn("container not unregistered", "id", id, "reason", err)
		}
		return err
	}
	n := c.srv.store.DropOwned(ct.Cgroup)
	c.srv.synced()
	c.srv.stats.unregistrations.Add(1)
	c.log.Info("container unregistered", "id", ct.ID, "identity", ct.Identity, "dropped", n)
	return nil
}
