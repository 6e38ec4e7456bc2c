package cgroup

import "testing"

func TestIdentityFromPath(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"/system.slice/rpm-ostreed.service", "rpm-ostreed.service"},
		{"/system.slice/zincati.service", "zincati.service"},
		{"system.slice/zincati.service", "zincati.service"},
		{"/system.slice/foo.service/", "foo.service"},
		{"/system.slice/foo.service/sub/rpm-ostreed.service", "foo.service"},
		{"/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"},
		{"/user.slice/user-1000.slice/session-2.scope", "session-2.scope"},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/x.service", "user@1000.service"},
		{"/machine.slice/libpod-0123abcd.scope/container", "libpod-0123abcd.scope"},
		{"/init.scope", "init.scope"},
		{"/a.slice/b.slice/c.slice/d.service", "d.service"},
		{"/", "cgroup:/"},
		{"", "cgroup:/"},
		{"/system.slice", "cgroup:/system.slice"},
		{"/machine/ctr1", "cgroup:/machine/ctr1"},
		{"/default/x.service", "cgroup:/default/x.service"},
		{"/system.slice/../etc", "cgroup:/etc"},
		{"/system.slice/.service", "cgroup:/system.slice/.service"},
		{"/system.slice/@.service", "cgroup:/system.slice/@.service"},
		{"/system.slice/foo@.service", "cgroup:/system.slice/foo@.service"},
		{"/system.slice/bad name.service", "cgroup:/system.slice/bad name.service"},
		{"/x.slice/y", "cgroup:/x.slice/y"},
	} {
		if got := IdentityFromPath(tc.path); got != tc.want {
			t.Errorf("IdentityFromPath(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestOwner(t *testing.T) {
	for _, tc := range []struct{ path, id, owner string }{
		{"/system.slice/rpm-ostreed.service", "rpm-ostreed.service", "/system.slice/rpm-ostreed.service"},
		{"/system.slice/foo.service/sub/x", "foo.service", "/system.slice/foo.service"},
		{"/a.slice/b.slice/d.scope/", "d.scope", "/a.slice/b.slice/d.scope"},
		{"/machine/ctr1", "cgroup:/machine/ctr1", "/machine/ctr1"},
		{"/", "cgroup:/", "/"},
	} {
		id, owner := Owner(tc.path)
		if id != tc.id || owner != tc.owner {
			t.Errorf("Owner(%q) = %q, %q; want %q, %q", tc.path, id, owner, tc.id, tc.owner)
		}
	}
}
