package policy

import (
	"strings"
	"testing"

	"github.com/capd-dev/capd/internal/proto"
)

// The acquire decision carries what the consumer's grant must withhold:
// the entry's restrictions and every matching policy grant's, together.
func TestAcquireRestrict(t *testing.T) {
	c := mustParse(t, `
[[grant]]
consumer = "db.service"
acquire  = ["a.service:*"]

[[grant]]
consumer = "db.service"
acquire  = ["a.service:ro-*"]
restrict = ["read-only"]

[[grant]]
consumer = "container:web"
acquire  = ["a.service:dir"]
per_consumer = true
`)
	for _, tc := range []struct {
		who   *Caller
		t     Target
		allow bool
		want  proto.Restrict
	}{
		{svc, Target{Owner: "a.service", Name: "plain", UID: 2000, Kind: "file"}, true, 0},
		{svc, Target{Owner: "a.service", Name: "ro-x", UID: 2000, Kind: "file"}, true, proto.RestrictOwn | proto.RestrictReadOnly},
		{svc, Target{Owner: "a.service", Name: "plain", UID: 2000, Kind: "memfd", Restrict: proto.RestrictOwn}, true, proto.RestrictOwn},
		// The owner gets its own description whatever policy asks.
		{&Caller{Identity: "a.service", UID: 2000, HostNamespaces: true}, Target{Owner: "a.service", Name: "ro-x", UID: 2000, Kind: "file", Restrict: proto.RestrictOwn}, true, 0},
		// A directory as a detached mount is confined: no allow_kinds needed.
		{&Caller{Identity: "container:web", UID: 0, Container: "abc", HostNamespaces: true}, Target{Owner: "a.service", Name: "dir", UID: 2000, Kind: "dir"}, true, proto.RestrictOwn},
		{&Caller{Identity: "container:web", UID: 0, Container: "abc", HostNamespaces: true}, Target{Owner: "a.service", Name: "dir", UID: 2000, Kind: "path"}, false, 0},
	} {
		d := c.Authorize(tc.who, Acquire, &tc.t)
		if d.Allowed != tc.allow || d.Restrict != tc.want {
			t.Errorf("%s acquiring %+v: %+v, want allowed=%v restrict=%v", tc.who.Identity, tc.t, d, tc.allow, tc.want)
		}
	}
	// Without per_consumer, a plain directory still needs allow_kinds.
	c2 := mustParse(t, "[[grant]]\nconsumer = \"container:web\"\nacquire = [\"a.service:dir\"]\n")
	if d := c2.Authorize(&Caller{Identity: "container:web", Container: "abc", HostNamespaces: true}, Acquire, &Target{Owner: "a.service", Name: "dir", Kind: "dir"}); d.Allowed || d.Class != UnconfinedKind {
		t.Errorf("a plain dir for a container: %+v", d)
	}
}

func TestDelegateDecision(t *testing.T) {
	c := mustParse(t, `
[[grant]]
consumer    = "db.service"
acquire     = ["a.service:doc"]
delegate_to = ["helper-*.service"]
`)
	doc := func(to string, allow ...Pattern) *Target {
		return &Target{Owner: "a.service", Name: "doc", UID: 2000, Kind: "file", To: to, Allow: allow}
	}
	for _, tc := range []struct {
		who   *Caller
		t     *Target
		allow bool
		why   string
	}{
		{svc, doc("helper-1.service"), true, ""},
		{svc, doc("other.service"), false, "delegate_to"},
		{svc, doc("helper-1.service", "db.service"), false, "allow list"},
		{svc, doc("helper-1.service", "db.service", "helper-*.service"), true, ""},
		{&Caller{Identity: "x.service", UID: 1000, HostNamespaces: true}, doc("helper-1.service"), false, "delegate_to"},
		{svc, &Target{Owner: "a.service", Name: "other", UID: 2000, To: "helper-1.service"}, false, "delegate_to"},
		// A host administrator has no delegation of its own to make.
		{admin, doc("helper-1.service"), false, "delegate_to"},
	} {
		d := c.Authorize(tc.who, Delegate, tc.t)
		if d.Allowed != tc.allow || !strings.Contains(d.Reason, tc.why) {
			t.Errorf("%s delegating %+v: %+v, want allowed=%v with %q", tc.who.Identity, *tc.t, d, tc.allow, tc.why)
		}
	}
}

// A grant's delegators may revoke it (their identity and uid, or any uid
// for a delegated grant's); check is the owner's.
func TestRevokeByDelegator(t *testing.T) {
	c := Default()
	g := &Target{Owner: "a.service", Name: "doc", UID: 2000, Delegators: []Grantee{{"db.service", 1000}, {"helper.service", AnyUID}}}
	for _, tc := range []struct {
		who   *Caller
		act   Action
		allow bool
	}{
		{svc, Revoke, true},
		{svcOtherUID, Revoke, false},
		{&Caller{Identity: "helper.service", UID: 7, HostNamespaces: true}, Revoke, true},
		{&Caller{Identity: "other.service", UID: 1000, HostNamespaces: true}, Revoke, false},
		{&Caller{Identity: "a.service", UID: 2000, HostNamespaces: true}, Revoke, true},
		{svc, Check, false},
		{&Caller{Identity: "a.service", UID: 2000, HostNamespaces: true}, Check, true},
		{&Caller{Identity: "a.service", UID: 3000, HostNamespaces: true}, Check, false},
		{admin, Check, true},
		// Replace is the owner's alone: delegators do not count.
		{svc, Replace, false},
	} {
		if d := c.Authorize(tc.who, tc.act, g); d.Allowed != tc.allow {
			t.Errorf("%s (uid %d) %v: %+v, want allowed=%v", tc.who.Identity, tc.who.UID, tc.act, d, tc.allow)
		}
	}
}

func TestGrantRestrictConfig(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`restrict = ["read-only", "noexec"]`, ""},
		{`restrict = ["per-consumer"]`, "per_consumer = true"},
		{`restrict = ["keep-publisher"]`, "publisher's"},
		{`restrict = ["rw"]`, "unknown restriction"},
		{`delegate_to = ["[!x]"]`, "[^...]"},
	} {
		_, err := Load(write(t, t.TempDir(), "capd.toml", "[[grant]]\nconsumer = \"a.service\"\nacquire = [\"b.service:c\"]\n"+tc.body+"\n"), false)
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.body, err, tc.want)
		}
	}
}
