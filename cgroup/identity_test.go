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
		{"/a.slice/a-b.slice/a-b-c.slice/d.service", "d.service"},
		{"/a.slice/a-b.slice/z.service", "z.service"},
		{"/system.slice/system-foo\\x2dbar.slice/x.service", "x.service"},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/container:web.service", "user@1000.service"},

		// Slices out of systemd's nesting: not systemd-shaped.
		{"/capdtest_1.slice/x.slice/rpm-ostreed.service", "cgroup:/capdtest_1.slice/x.slice/rpm-ostreed.service"},
		{"/plain/x.slice/rpm-ostreed.service", "cgroup:/plain/x.slice/rpm-ostreed.service"},
		{"/a-b.slice/z.service", "cgroup:/a-b.slice/z.service"},
		{"/a.slice/b.slice/c.slice/d.service", "cgroup:/a.slice/b.slice/c.slice/d.service"},
		{"/a.slice/a-b-c.slice/d.service", "cgroup:/a.slice/a-b-c.slice/d.service"},
		{"/a.slice/b-c.slice/d.service", "cgroup:/a.slice/b-c.slice/d.service"},
		{"/system.slice/system.slice/x.service", "cgroup:/system.slice/system.slice/x.service"},
		{"/user-1000.slice/x.service", "cgroup:/user-1000.slice/x.service"},
		{"/-.slice/x.service", "cgroup:/-.slice/x.service"},
		{"/a-.slice/x.service", "cgroup:/a-.slice/x.service"},
		{"/a.slice/a--b.slice/x.service", "cgroup:/a.slice/a--b.slice/x.service"},
		{"/a@b.slice/x.service", "cgroup:/a@b.slice/x.service"},
		{"/.slice/x.service", "cgroup:/.slice/x.service"},

		// Unit names with ':' would pass for another kind of identity.
		{"/system.slice/container:web.service", "cgroup:/system.slice/container:web.service"},
		{"/system.slice/pod:ns.scope", "cgroup:/system.slice/pod:ns.scope"},
		{"/machine:x.scope", "cgroup:/machine:x.scope"},
		{"/system.slice/cgroup:.service/sub", "cgroup:/system.slice/cgroup:.service/sub"},

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
		{"/a.slice/a-b.slice/d.scope/", "d.scope", "/a.slice/a-b.slice/d.scope"},
		{"/a.slice/b.slice/d.scope/", "cgroup:/a.slice/b.slice/d.scope", "/a.slice/b.slice/d.scope"},
		{"/system.slice/container:web.service/x", "cgroup:/system.slice/container:web.service/x", "/system.slice/container:web.service/x"},
		{"/machine/ctr1", "cgroup:/machine/ctr1", "/machine/ctr1"},
		{"/", "cgroup:/", "/"},
	} {
		id, owner := Owner(tc.path)
		if id != tc.id || owner != tc.owner {
			t.Errorf("Owner(%q) = %q, %q; want %q, %q", tc.path, id, owner, tc.id, tc.owner)
		}
	}
}

// Within is a path-component prefix test: /ab is not below /a.
func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		c, p string
		want bool
	}{
		{"/a", "/", true}, {"/", "/", true}, {"/a", "/a", true}, {"/a/b", "/a", true},
		{"/ab", "/a", false}, {"/a", "/a/b", false}, {"/b", "/a", false},
	} {
		if got := Within(tc.c, tc.p); got != tc.want {
			t.Errorf("Within(%s, %s) = %v", tc.c, tc.p, got)
		}
	}
}
