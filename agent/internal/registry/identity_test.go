package registry

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A machine is machine:NAME only where machined's record for its unit says
// so: not from the unit's name alone, and not outside machine.slice.
func TestIdentityOfMachines(t *testing.T) {
	dir := t.TempDir()
	old := MachinesDir
	MachinesDir = dir
	defer func() { MachinesDir = old }()
	os.Symlink("web-1", filepath.Join(dir, `unit:machine-web\x2d1.scope`))
	os.Symlink("db", filepath.Join(dir, "unit:systemd-nspawn@db.service"))
	os.Symlink("../../etc", filepath.Join(dir, "unit:machine-evil.scope"))
	for _, tc := range []struct {
		path, identity, owner string
		aliases               []string
	}{
		{`/machine.slice/machine-web\x2d1.scope`, "machine:web-1", `/machine.slice/machine-web\x2d1.scope`, []string{`machine-web\x2d1.scope`}},
		{`/machine.slice/machine-web\x2d1.scope/payload/system.slice/nginx.service`, "machine:web-1", `/machine.slice/machine-web\x2d1.scope`, []string{`machine-web\x2d1.scope`}},
		{"/machine.slice/systemd-nspawn@db.service/payload", "machine:db", "/machine.slice/systemd-nspawn@db.service", []string{"systemd-nspawn@db.service"}},
		{"/machine.slice/machine-gone.scope", "machine-gone.scope", "/machine.slice/machine-gone.scope", nil},
		{"/machine.slice/machine-evil.scope", "machine-evil.scope", "/machine.slice/machine-evil.scope", nil},
		{"/system.slice/systemd-nspawn@db.service", "systemd-nspawn@db.service", "/system.slice/systemd-nspawn@db.service", nil},
		{"/machine/x", "cgroup:/machine/x", "/machine/x", nil},
	} {
		id, owner, aliases := IdentityOf(tc.path)
		if id != tc.identity || owner != tc.owner || !slices.Equal(aliases, tc.aliases) {
			t.Errorf("IdentityOf(%s) = %s, %s, %v; want %s, %s, %v", tc.path, id, owner, aliases, tc.identity, tc.owner, tc.aliases)
		}
	}
}
