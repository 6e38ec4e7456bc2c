package agent

import (
	"fmt"
	"time"

	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// grantFor turns an acquired entry into what the consumer gets: the entry
// itself, or, when the decision restricts it, the consumer's own grant of
// it (made now if it has none, and durable before it is handed out). It
// takes over the caller's reference to e.
func (c *conn) grantFor(cfg *policy.Config, e *store.Entry, r proto.Restrict) (*store.Entry, error) {
	if r == 0 {
		return e, nil
	}
	defer c.srv.store.Release(e)
	o := store.GrantOptions{Grantee: store.Grantee{Identity: c.peer.Identity, UID: c.peer.UID}, Restrict: r, Charge: c.charge()}
	g, created, err := c.srv.store.Grant(e, o, c.srv.limits(cfg))
	if err != nil {
		return nil, err
	}
	if created {
		if err := c.made(g); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// charge is the caller's account for the grants it makes: its cgroup, its
// accounting uid, limited unless it is a host administrator.
func (c *conn) charge() store.Charge {
	return store.Charge{Cgroup: c.peer.Cgroup, Acct: c.peer.Acct, Limited: !c.peer.HostAdmin()}
}

// made makes a new grant durable, or takes it back.
func (c *conn) made(g *store.Entry) error {
	if err := c.srv.durable(g.ID()); err != nil {
		c.srv.store.Release(g)
		c.srv.store.Unpublish(g)
		c.srv.synced()
		return proto.Errorf(proto.CodeInternal, "no grant made: systemd did not confirm it keeps the grant (%v); ask again", err)
	}
	grantee, uid := g.Grantee()
	c.log.Info("granted", "entry", g.Owner()+":"+g.BaseName(), "grant", g.GrantID(), "grantee", grantee, "uid", uid,
		"restrict", g.Restrict().String(), "parent", parentID(g), "by", c.peer.Identity)
	return nil
}

// parentID is the id of the grant g was delegated from, "" for a grant
// of the entry itself (or an entry).
func parentID(g *store.Entry) string {
	if p := g.Parent(); p != nil {
		return p.GrantID()
	}
	return ""
}

// delegatedFor returns a grant of owner:name delegated to the caller, if
// the policy that allowed its delegation still does; nil otherwise.
func (c *conn) delegatedFor(cfg *policy.Config, owner, name string) *store.Entry {
	g := c.srv.store.Delegated(owner, name, store.Grantee{Identity: c.peer.Identity, UID: c.peer.UID})
	if g == nil {
		return nil
	}
	from, _ := g.Parent().Grantee()
	t := g.Root().Target()
	t.To = c.peer.Identity
	if d := cfg.Authorize(&policy.Caller{Identity: from}, policy.Delegate, t); !d.Allowed {
		c.log.Info("delegated grant no longer allowed by policy", "entry", owner+":"+name, "grant", g.GrantID(), "from", from, "reason", d.Reason)
		c.srv.store.Release(g)
		return nil
	}
	return g
}

// describeGrant adds what the consumer got to an acquire's reply.
func (c *conn) describeGrant(m *proto.Builder, e *store.Entry) {
	m.String(proto.AttrEnforcement, c.srv.enforcement())
	if e.IsGrant() {
		putGrant(m, e)
	}
}

// putGrant describes grant g: GRANT, GRANTEE, UID, PARENT (if delegated),
// RESTRICT, DEPTH.
func putGrant(m *proto.Builder, g *store.Entry) {
	grantee, uid := g.Grantee()
	m.String(proto.AttrGrant, g.GrantID())
	m.String(proto.AttrGrantee, grantee)
	m.U32(proto.AttrUID, uid)
	if p := parentID(g); p != "" {
		m.String(proto.AttrParent, p)
	}
	m.U32(proto.AttrRestrict, uint32(g.Restrict()))
	m.U32(proto.AttrDepth, uint32(g.Depth()))
}

// refAttrs reads OWNER (default: the caller) and NAME, and the extra
// attributes want lists, once each.
func refAttrs(op proto.Op, attrs []byte, owner string, want ...proto.Attr) (string, string, map[proto.Attr][]byte, error) {
	var name string
	var haveName, haveOwner bool
	got := map[proto.Attr][]byte{}
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		switch {
		case t == proto.AttrName && !haveName:
			name, haveName = string(v), true
		case t == proto.AttrOwner && !haveOwner:
			owner, haveOwner = string(v), true
		default:
			known := false
			for _, w := range want {
				if w == t {
					known = true
				}
			}
			if _, dup := got[t]; !known || dup {
				return "", "", nil, badAttr(op, t)
			}
			got[t] = v
		}
	}
	if err := it.Err(); err != nil {
		return "", "", nil, err
	}
	if !haveName {
		return "", "", nil, proto.Errorf(proto.CodeInvalidRequest, "%s needs a name", op)
	}
	if err := proto.ValidName(name); err != nil {
		return "", "", nil, proto.Errorf(proto.CodeInvalidRequest, "%s: %v", op, err)
	}
	return owner, name, got, nil
}

// check answers which of owner:name's descriptions the request's fd is:
// the entry's own, or one grant's (with whom it was made for).
func (c *conn) check(cfg *policy.Config, attrs []byte, reqFD *linux.FD, out []byte) (proto.Builder, error) {
	if !reqFD.Valid() {
		return proto.Builder{}, proto.Errorf(proto.CodeInvalidRequest, "check needs exactly one fd")
	}
	owner, name, _, err := refAttrs(proto.OpCheck, attrs, c.peer.Identity)
	if err != nil {
		return proto.Builder{}, err
	}
	if owner != c.peer.Identity {
		if err := c.authorize(cfg, policy.Check, &policy.Target{Owner: owner, Name: name, UID: ^uint32(0)}); err != nil {
			return proto.Builder{}, err
		}
	}
	may := func(e *store.Entry) error { return c.authorize(cfg, policy.Check, e.Target()) }
	x, err := c.srv.store.Which(owner, name, reqFD.Int(), may)
	if err != nil {
		return proto.Builder{}, err
	}
	defer c.srv.store.Release(x)
	m := proto.NewMessage(out, proto.OpCheck, proto.CodeOK)
	m.String(proto.AttrOwner, x.Owner())
	m.String(proto.AttrName, x.BaseName())
	m.String(proto.AttrEnforcement, c.srv.enforcement())
	if x.IsGrant() {
		putGrant(&m, x)
	}
	return m, nil
}

// delegate derives a grant of owner:name for another identity from the
// caller's own grant, which the request's fd must be. The new grant is
// the delegate's to acquire; its restrictions include the caller's, and
// it expires no later.
func (c *conn) delegate(cfg *policy.Config, attrs []byte, reqFD *linux.FD, out []byte) (proto.Builder, error) {
	if !reqFD.Valid() {
		return proto.Builder{}, proto.Errorf(proto.CodeInvalidRequest, "delegate needs the caller's grant as its one fd")
	}
	owner, name, got, err := refAttrs(proto.OpDelegate, attrs, "", proto.AttrGrantee, proto.AttrRestrict, proto.AttrTTL)
	if err != nil {
		return proto.Builder{}, err
	}
	to := string(got[proto.AttrGrantee])
	var r proto.Restrict
	var ttl uint64
	switch {
	case owner == "":
		err = proto.Errorf(proto.CodeInvalidRequest, "delegate needs the entry's owner")
	case to == "" || len(to) > proto.MaxIdentity:
		err = proto.Errorf(proto.CodeInvalidRequest, "delegate needs the identity to delegate to")
	case to == c.peer.Identity:
		err = proto.Errorf(proto.CodeInvalidRequest, "%s cannot delegate to itself", to)
	}
	if err == nil && got[proto.AttrRestrict] != nil {
		var v uint32
		if v, err = proto.U32(got[proto.AttrRestrict]); err == nil && proto.Restrict(v)&^proto.RestrictAll != 0 {
			err = proto.Errorf(proto.CodeInvalidRequest, "unknown restrictions %#x", v)
		}
		r = proto.Restrict(v) &^ proto.RestrictKeep
	}
	if err == nil && got[proto.AttrTTL] != nil {
		if ttl, err = proto.U64(got[proto.AttrTTL]); err == nil && ttl == 0 {
			err = proto.Errorf(proto.CodeInvalidRequest, "a ttl of 0 ms")
		}
	}
	if err != nil {
		return proto.Builder{}, err
	}
	e := c.srv.store.Acquire(owner, name)
	if e == nil {
		return proto.Builder{}, proto.Errorf(proto.CodeNotFound, "%s:%s is not published", owner, name)
	}
	t := e.Target()
	c.srv.store.Release(e)
	t.To = to
	if err := c.authorize(cfg, policy.Delegate, t); err != nil {
		return proto.Builder{}, err
	}
	// The fd proves the caller holds a grant of the entry; the grant must
	// be the caller's own (identity and uid).
	from, err := c.srv.store.Which(owner, name, reqFD.Int(), func(*store.Entry) error { return nil })
	if err != nil {
		if proto.ErrNotOurs.Is(wireError(err)) {
			return proto.Builder{}, proto.Errorf(proto.CodePermissionDenied, "the fd is not a grant of %s:%s: delegate what you acquired (a per-consumer grant)", owner, name)
		}
		return proto.Builder{}, err
	}
	defer c.srv.store.Release(from)
	if grantee, uid := from.Grantee(); !from.IsGrant() || grantee != c.peer.Identity || (uid != c.peer.UID && uid != store.AnyUID) {
		return proto.Builder{}, proto.Errorf(proto.CodePermissionDenied, "the fd is %s, not a grant made for %s (uid %d): only a grant's holder delegates it", describe(from), c.peer.Identity, c.peer.UID)
	}
	// Charged to the delegator: delegating fills its own quotas, never the
	// publisher's.
	o := store.GrantOptions{Grantee: store.Grantee{Identity: to, UID: store.AnyUID}, Restrict: r, Delegated: true, Charge: c.charge()}
	if ttl > 0 {
		o.Expires = time.Now().Add(time.Duration(min(ttl, uint64((100*365*24*time.Hour).Milliseconds()))) * time.Millisecond)
	}
	// The delegate's uid is not known until it acquires: the grant is for
	// the identity, any uid in it.
	g, created, err := c.srv.store.Grant(from, o, c.srv.limits(cfg))
	if err != nil {
		return proto.Builder{}, err
	}
	if created {
		if err := c.made(g); err != nil {
			return proto.Builder{}, err
		}
	}
	defer c.srv.store.Release(g)
	m := proto.NewMessage(out, proto.OpDelegate, proto.CodeOK)
	putGrant(&m, g)
	return m, nil
}

// describe names an entry or grant for a message.
func describe(e *store.Entry) string {
	if !e.IsGrant() {
		return fmt.Sprintf("the entry %s:%s itself", e.Owner(), e.BaseName())
	}
	grantee, _ := e.Grantee()
	return fmt.Sprintf("grant %s of %s:%s (made for %s)", e.GrantID(), e.Owner(), e.BaseName(), grantee)
}

// revokeGrant revokes one grant of owner:name and every grant derived
// from it; the entry's owner (its publishing uid), a host administrator,
// or the holder of a grant it was delegated from may.
func (c *conn) revokeGrant(cfg *policy.Config, owner, name, id string) error {
	if err := proto.ValidGrantID(id); err != nil {
		return proto.Errorf(proto.CodeInvalidRequest, "revoke: %v", err)
	}
	may := func(g *store.Entry) error { return c.authorize(cfg, policy.Revoke, g.Target()) }
	gid, n, err := c.srv.store.RevokeGrant(owner, name, id, may)
	if err != nil {
		return err
	}
	c.srv.stats.revokes.Add(1)
	if err := c.srv.durable(gid); err != nil {
		return proto.Errorf(proto.CodeInternal, "grant %s of %s:%s is revoked in the agent, but systemd did not confirm it dropped its copy (%v): after a restart of the agent it may come back; revoke it again then", id, owner, name, err)
	}
	c.log.Info("revoked grant", "entry", owner+":"+name, "grant", id, "grants", n, "by", c.peer.Identity, "uid", c.peer.UID, "pid", c.peer.PID, "enforcement", c.srv.enforcement())
	return nil
}
