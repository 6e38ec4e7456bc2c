package policy

import (
	"slices"
	"strings"
	"testing"
)

// allowed asks whether a host service called consumer (uid 1000) may
// acquire owner:name, a regular file published by uid 2000.
func allowed(c *Config, consumer, owner, name string) bool {
	who := &Caller{Identity: consumer, UID: 1000, HostNamespaces: true}
	return c.Authorize(who, Acquire, &Target{Owner: owner, Name: name, UID: 2000, Kind: "file"}).Allowed
}

func mustParse(t *testing.T, body string) *Config {
	t.Helper()
	c, err := Load(write(t, t.TempDir(), "capd.toml", body), false)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var (
	admin       = &Caller{Identity: "cgroup:/", UID: 0, CapSysAdmin: true, CapSysPtrace: true, HostNamespaces: true}
	rootNoCaps  = &Caller{Identity: "cgroup:/", UID: 0, HostNamespaces: true}
	rootUserNS  = &Caller{Identity: "cgroup:/", UID: 0, CapSysAdmin: true, CapSysPtrace: true, Why: "it runs in a user namespace of its own"}
	rootInCtr   = &Caller{Identity: "container:web", Aliases: []string{"container:abc"}, UID: 0, CapSysAdmin: true, HostNamespaces: true, Container: "abc"}
	adminNoPtr  = &Caller{Identity: "cgroup:/", UID: 0, CapSysAdmin: true, HostNamespaces: true}
	svc         = &Caller{Identity: "db.service", UID: 1000, HostNamespaces: true}
	svcOtherUID = &Caller{Identity: "db.service", UID: 65534, HostNamespaces: true}
)

func TestHostAdminNeedsEveryFact(t *testing.T) {
	c := Default()
	for _, tc := range []struct {
		who  *Caller
		act  Action
		want bool
		why  string
	}{
		{admin, Status, true, ""},
		{admin, Audit, true, ""},
		{admin, ManageContainers, true, ""},
		{rootNoCaps, Status, false, "lacks CAP_SYS_ADMIN"},
		{rootNoCaps, Audit, false, "host administrator"},
		{rootNoCaps, ManageContainers, false, "lacks CAP_SYS_ADMIN"},
		{rootUserNS, Status, false, "user namespace"},
		{rootInCtr, Status, false, "container abc"},
		{rootInCtr, ManageContainers, false, "container abc"},
		{adminNoPtr, Status, true, ""},
		{adminNoPtr, Audit, false, "CAP_SYS_PTRACE"},
		{svc, Status, false, "uid 1000"},
	} {
		d := c.Authorize(tc.who, tc.act, nil)
		if d.Allowed != tc.want || !strings.Contains(d.Reason, tc.why) {
			t.Errorf("%+v %v: %+v, want allowed=%v and a reason with %q", *tc.who, tc.act, d, tc.want, tc.why)
		}
		if !d.Allowed && !strings.Contains(d.Reason, "host administrator") {
			t.Errorf("%v refusal %q does not say it needs a host administrator", tc.act, d.Reason)
		}
	}
}

func TestRevokeAndReplace(t *testing.T) {
	c := Default()
	own := &Target{Owner: "db.service", Name: "x", UID: 1000}
	other := &Target{Owner: "web.service", Name: "x", UID: 1000}
	for _, tc := range []struct {
		who  *Caller
		act  Action
		t    *Target
		want bool
	}{
		{svc, Revoke, own, true},
		{svc, Replace, own, true},
		{svcOtherUID, Revoke, own, false},
		{svcOtherUID, Replace, own, false},
		{svc, Revoke, other, false},
		{admin, Revoke, other, true},
		{rootNoCaps, Revoke, other, false},
		{rootInCtr, Revoke, &Target{Owner: "container:web", Name: "x", UID: 1000}, false},
		{rootInCtr, Replace, &Target{Owner: "container:web", Name: "x", UID: 1000}, false},
		{rootInCtr, Replace, &Target{Owner: "container:web", Name: "x", UID: 0}, true},
	} {
		if d := c.Authorize(tc.who, tc.act, tc.t); d.Allowed != tc.want {
			t.Errorf("%s uid %d %v %s:%s by uid %d: %+v, want %v", tc.who.Identity, tc.who.UID, tc.act, tc.t.Owner, tc.t.Name, tc.t.UID, d, tc.want)
		}
	}
}

func TestAcquire(t *testing.T) {
	c := mustParse(t, `
[[grant]]
consumer = "container:web"
acquire  = ["files.service:*"]
[[grant]]
consumer = "container:web"
acquire  = ["files.service:etc"]
allow_kinds = ["dir"]
[[grant]]
consumer = "*.service"
acquire  = ["files.service:any"]
`)
	f := func(name, kind string, uid uint32, allow ...Pattern) *Target {
		return &Target{Owner: "files.service", Name: name, UID: uid, Kind: kind, Allow: allow}
	}
	files := &Caller{Identity: "files.service", UID: 1000, HostNamespaces: true}
	filesNobody := &Caller{Identity: "files.service", UID: 65534, HostNamespaces: true}
	web := &Caller{Identity: "container:web", Aliases: []string{"container:1"}, UID: 0, HostNamespaces: true, Container: "1"}
	fooSvcCtr := &Caller{Identity: "container:foo.service", UID: 0, HostNamespaces: true, Container: "2"}
	for _, tc := range []struct {
		who  *Caller
		t    *Target
		want bool
		why  string
	}{
		{files, f("x", "file", 1000, "nothing-else.service"), true, "own entry"},
		{filesNobody, f("x", "file", 1000, "nothing-else.service"), false, "published by uid 1000"},
		{admin, f("x", "file", 1000), false, "no grant"}, // root gets no implicit grant
		{web, f("x", "file", 1000), true, ""},
		{web, f("x", "file", 1000, "container:1"), true, ""}, // alias
		{web, f("x", "file", 1000, "container:db"), false, "allow list"},
		{web, f("root", "dir", 1000), false, `allow_kinds = ["dir"]`},
		{web, f("opath", "path", 1000), false, `allow_kinds = ["path"]`},
		{web, f("etc", "dir", 1000), true, ""},
		{&Caller{Identity: "files.service", UID: 1000, Why: "user namespace"}, f("d", "dir", 1000), false, "reaches outside"},
		{svc, f("any", "dir", 1000), true, ""}, // host consumers may take directories
		{fooSvcCtr, f("any", "file", 1000), false, "no grant"},
	} {
		d := c.Authorize(tc.who, Acquire, tc.t)
		if d.Allowed != tc.want || !strings.Contains(d.Reason, tc.why) {
			t.Errorf("%s uid %d acquires %s (%s): %+v, want %v with %q", tc.who.Identity, tc.who.UID, tc.t.Name, tc.t.Kind, d, tc.want, tc.why)
		}
	}
	if !c.Authorize(filesNobody, See, f("x", "file", 1000)).Allowed {
		t.Error("an owner's other uid cannot see the entry in list")
	}
	if c.Authorize(svc, See, &Target{Owner: "other.service", Name: "x"}).Allowed {
		t.Error("an ungranted entry is visible")
	}
}

func TestPatternNeverCrossesKinds(t *testing.T) {
	for _, tc := range []struct {
		pattern, identity string
		want              bool
	}{
		{"*.service", "zincati.service", true},
		{"*.service", "container:foo.service", false},
		{"*", "zincati.service", true},
		{"*", "container:web", false},
		{"*", "cgroup:/x", false},
		{"container:*", "container:web", true},
		{"container:*", "container:web:x", false},
		{"*:web", "container:web", true},
		{"*:*", "pod:ns/p/c", false},
		{"pod:payments/*", "pod:payments/api", true},
		{"pod:payments/*", "pod:payments/api/ctr", false},
		{"cgroup:/machine.slice/*", "cgroup:/machine.slice/x", true},
		{"cgroup:/machine.slice/*", "cgroup:/machine.slice/x/y", false},
		{"container?web", "container:web", false},
		{"container[:]web", "container:web", false},
	} {
		if got := Pattern(tc.pattern).Match(tc.identity); got != tc.want {
			t.Errorf("%q matches %q: %v, want %v", tc.pattern, tc.identity, got, tc.want)
		}
	}
	if err := ValidPattern("container[:]web"); err == nil {
		t.Error("a class holding ':' is accepted")
	}
}

func TestAllowKindsValidated(t *testing.T) {
	_, err := Load(write(t, t.TempDir(), "capd.toml", "[[grant]]\nconsumer = \"a.service\"\nacquire = [\"b.service:x\"]\nallow_kinds = [\"socket\"]\n"), false)
	if err == nil || !strings.Contains(err.Error(), `unknown kind "socket"`) {
		t.Fatalf("allow_kinds = [\"socket\"]: %v", err)
	}
}

// Every refusal carries a class that its action lists in Denials, and its
// Reason text stays free; every allow carries none.
func TestDecisionClass(t *testing.T) {
	c := mustParse(t, `
[[grant]]
consumer = "container:web"
acquire  = ["files.service:*"]
`)
	web := &Caller{Identity: "container:web", UID: 0, HostNamespaces: true, Container: "1"}
	files := &Caller{Identity: "files.service", UID: 1000, HostNamespaces: true}
	for _, tc := range []struct {
		who  *Caller
		act  Action
		t    *Target
		want Class
	}{
		{svc, Acquire, &Target{Owner: "files.service", Name: "x", UID: 1000, Kind: "file"}, NotGranted},
		{svcOtherUID, Acquire, &Target{Owner: "db.service", Name: "x", UID: 1000, Kind: "file"}, OwnerUID},
		{web, Acquire, &Target{Owner: "files.service", Name: "x", UID: 1000, Kind: "file", Allow: []Pattern{"container:db"}}, Audience},
		{web, Acquire, &Target{Owner: "files.service", Name: "x", UID: 1000, Kind: "dir"}, UnconfinedKind},
		{web, Acquire, &Target{Owner: "files.service", Name: "x", UID: 1000, Kind: "file"}, Allowed},
		{files, Acquire, &Target{Owner: "files.service", Name: "x", UID: 1000, Kind: "file"}, Allowed},
		{svc, See, &Target{Owner: "files.service", Name: "x", UID: 1000}, NotVisible},
		{svc, Revoke, &Target{Owner: "files.service", Name: "x", UID: 1000}, NotOwner},
		{svcOtherUID, Replace, &Target{Owner: "db.service", Name: "x", UID: 1000}, OwnerUID},
		{svc, Status, nil, HostAdmin},
		{rootInCtr, ManageContainers, nil, HostAdmin},
		{rootUserNS, Reload, nil, HostAdmin},
		{svc, Audit, nil, HostAdmin},
		{adminNoPtr, Audit, nil, CapSysPtrace},
		{admin, Audit, nil, Allowed},
		{svc, Publish, nil, Allowed},
		{svc, Action(200), nil, UnknownAction},
	} {
		d := c.Authorize(tc.who, tc.act, tc.t)
		if d.Class != tc.want || d.Allowed != (tc.want == Allowed) || d.Reason == "" {
			t.Errorf("%s %v: %+v, want class %s", tc.who.Identity, tc.act, d, tc.want.Key())
		}
		if !d.Allowed && tc.act < Action(NumActions) && !slices.Contains(tc.act.Denials(), d.Class) {
			t.Errorf("%v refused with %s, which %v.Denials() = %v does not list", tc.act, d.Class.Key(), tc.act, tc.act.Denials())
		}
	}
	seen := map[string]bool{}
	for a := range Action(NumActions) {
		if k := a.Key(); k == "unknown" || seen[k] || strings.ContainsAny(k, " _\"") {
			t.Errorf("action %d has key %q", a, k)
		} else {
			seen[k] = true
		}
	}
	for cl := range Class(NumClasses) {
		if k := cl.Key(); k == "unknown" || seen[k] || strings.ContainsAny(k, " _\"") {
			t.Errorf("class %d has key %q", cl, k)
		} else {
			seen[k] = true
		}
	}
}
