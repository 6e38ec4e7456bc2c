package agent

import (
	"os"
	"path"
	"strings"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/proto"
)

// machinesDir is where systemd-machined records the machines it knows:
// "unit:UNIT" is a symlink to the name of the machine that runs in UNIT.
var machinesDir = "/run/systemd/machines"

// identityOf is the identity of cgroup path p, its owner cgroup, and
// further names: a unit, or a machine machined registered (systemd-nspawn
// with or without -b, systemd-nspawn@NAME.service, machinectl start) as
// "machine:NAME" with its unit as an alias, for every process in the
// machine, its own services included; else what cgroup.Owner says. A
// registered container's identity is the registry's (conn and audit look
// it up after this).
//
// A machine's name comes only from machined's record for its unit, which
// only root writes, never from the unit's name, which systemd escapes
// (machine-a\x2db.scope) and which anyone able to create units could pick.
func identityOf(p string) (identity, owner string, aliases []string) {
	identity, owner = cgroup.Owner(p)
	if strings.HasPrefix(identity, "cgroup:") || !strings.HasPrefix(owner, "/machine.slice/") {
		return identity, owner, nil
	}
	target, err := os.Readlink(path.Join(machinesDir, "unit:"+identity))
	if err != nil {
		return identity, owner, nil
	}
	name := target // machined links to the bare name
	if strings.Contains(name, "/") || proto.ValidContainerName(name) != nil {
		return identity, owner, nil
	}
	return "machine:" + name, owner, []string{identity}
}
