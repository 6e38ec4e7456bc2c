package registry

import (
	"os"
	"path"
	"strings"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/proto"
)

// MachinesDir is where systemd-machined records the machines it knows:
// "unit:UNIT" is a symlink to the name of the machine that runs in UNIT.
// Tests point it elsewhere.
var MachinesDir = "/run/systemd/machines"

// Identity is who the processes of a cgroup are.
type Identity struct {
	Name        string   // "container:web", "machine:m1", "nginx.service", "cgroup:/x"
	Aliases     []string // further names policy matches
	OwnerCgroup string   // the cgroup whose life is the identity's
	Container   string   // a registered container's id, or the machine's identity; "" on the host
}

// Identify gives the processes of cgroup p their identity: the registered
// container's whose cgroup holds p, else a machine's, a unit's or the
// plain cgroup's (see IdentityOf).
func (r *Registry) Identify(p string) Identity {
	if c := r.Lookup(p); c != nil {
		return Identity{Name: c.Identity, Aliases: c.Aliases, OwnerCgroup: c.Cgroup, Container: c.ID}
	}
	id := Identity{}
	id.Name, id.OwnerCgroup, id.Aliases = IdentityOf(p)
	if strings.HasPrefix(id.Name, "machine:") {
		// A machine is a container: never host authority.
		id.Container = id.Name
	}
	return id
}

// IdentityOf is the identity of cgroup path p outside registered
// containers, its owner cgroup, and further names: a machine machined
// registered (systemd-nspawn with or without -b,
// systemd-nspawn@NAME.service, machinectl start) is "machine:NAME" with its
// unit as an alias, for every process in the machine, its own services
// included; else what cgroup.Owner says.
//
// A machine's name comes only from machined's record for its unit, which
// only root writes, never from the unit's name, which systemd escapes
// (machine-a\x2db.scope) and which anyone able to create units could pick.
func IdentityOf(p string) (identity, owner string, aliases []string) {
	identity, owner = cgroup.Owner(p)
	if strings.HasPrefix(identity, "cgroup:") || !strings.HasPrefix(owner, "/machine.slice/") {
		return identity, owner, nil
	}
	target, err := os.Readlink(path.Join(MachinesDir, "unit:"+identity))
	if err != nil {
		return identity, owner, nil
	}
	name := target // machined links to the bare name
	if strings.Contains(name, "/") || proto.ValidContainerName(name) != nil {
		return identity, owner, nil
	}
	return "machine:" + name, owner, []string{identity}
}
