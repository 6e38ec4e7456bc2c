package client

import (
	"fmt"
	"os"
	"time"

	"github.com/capd-dev/capd/internal/proto"
)

// Grant is one consumer's own description of an entry published per
// consumer, or one delegated from such a grant.
type Grant struct {
	Owner string `json:"owner"` // the entry's owner
	Name  string `json:"name"`  // the entry's name
	ID    string `json:"id"`    // "g7"
	// Grantee is the identity the grant was made for; UID its uid
	// (4294967295 for a delegated grant: any uid of the identity).
	Grantee string `json:"grantee"`
	UID     uint32 `json:"uid"`
	// Parent is the id of the grant it was delegated from, "" for a
	// consumer's grant of the entry itself.
	Parent   string    `json:"parent"`
	Depth    int       `json:"depth"`
	Restrict []string  `json:"restrict"`
	Acquired uint64    `json:"acquired"`
	Made     time.Time `json:"made"`
	Expires  time.Time `json:"expires,omitzero"`
}

// Checked is what Check found an fd to be.
type Checked struct {
	Owner, Name string
	// Grant is nil when the fd is the entry's own description (shared by
	// every consumer of an entry that is not per consumer).
	Grant *Grant
	// Enforcement is what a revoke does on this agent: "enforced" or
	// "advisory".
	Enforcement string
}

func decodeGrant(b []byte, owner, name string) (Grant, error) {
	g := Grant{Owner: owner, Name: name, Restrict: []string{}}
	var err error
	var u uint64
	var v uint32
	it := proto.Attrs(b)
	for t, val, ok := it.Next(); ok && err == nil; t, val, ok = it.Next() {
		switch t {
		case proto.AttrGrant:
			g.ID = string(val)
		case proto.AttrGrantee:
			g.Grantee = string(val)
		case proto.AttrUID:
			g.UID, err = proto.U32(val)
		case proto.AttrParent:
			g.Parent = string(val)
		case proto.AttrRestrict:
			v, err = proto.U32(val)
			g.Restrict = proto.Restrict(v).Names()
		case proto.AttrDepth:
			v, err = proto.U32(val)
			g.Depth = int(v)
		case proto.AttrAcquired:
			g.Acquired, err = proto.U64(val)
		case proto.AttrPublished:
			u, err = proto.U64(val)
			g.Made = time.UnixMilli(int64(u))
		case proto.AttrExpires:
			u, err = proto.U64(val)
			g.Expires = time.UnixMilli(int64(u))
		}
	}
	if err == nil {
		err = it.Err()
	}
	return g, err
}

// Check asks the agent which description of the caller's entry name (of
// owner's, for a host administrator; "" is the caller) f is: the entry's
// own, or one consumer's grant, and whom that was made for. An fd that is
// none of them fails with ErrNotOurs.
func (c *Client) Check(owner, name string, f *os.File) (*Checked, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", name, err)
	}
	var out *Checked
	var rerr error
	err = raw.Control(func(fd uintptr) { out, rerr = c.CheckFD(owner, name, int(fd)) })
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", name, err)
	}
	return out, rerr
}

// CheckFD is Check with a bare fd, which stays the caller's.
func (c *Client) CheckFD(owner, name string, fd int) (*Checked, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpCheck, proto.CodeOK)
	if owner != "" {
		m.String(proto.AttrOwner, owner)
	}
	m.String(proto.AttrName, name)
	c.out = m.Bytes()
	attrs, _, err := c.roundTrip(proto.OpCheck, fd)
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", name, err)
	}
	ch := &Checked{}
	g, err := decodeGrant(attrs, "", "")
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", name, err)
	}
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		switch t {
		case proto.AttrOwner:
			ch.Owner = string(v)
		case proto.AttrName:
			ch.Name = string(v)
		case proto.AttrEnforcement:
			ch.Enforcement = string(v)
		}
	}
	if g.ID != "" {
		g.Owner, g.Name = ch.Owner, ch.Name
		ch.Grant = &g
	}
	return ch, nil
}

// RevokeGrant revokes grant id of owner's entry name ("" owner: the
// caller's), and every grant delegated from it; other consumers' grants
// keep working. The entry's owner, a host administrator, or the holder of
// a grant it was delegated from may.
func (c *Client) RevokeGrant(owner, name, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpRevoke, proto.CodeOK)
	if owner != "" {
		m.String(proto.AttrOwner, owner)
	}
	m.String(proto.AttrName, name)
	m.String(proto.AttrGrant, id)
	c.out = m.Bytes()
	if _, _, err := c.roundTrip(proto.OpRevoke, -1); err != nil {
		return fmt.Errorf("revoke grant %s of %s: %w", id, name, err)
	}
	return nil
}

// DelegateOptions are the terms of a delegation.
type DelegateOptions struct {
	// Restrict withholds more than the delegator's own grant does
	// ("read-only", ...); never less.
	Restrict []string
	// TTL ends the delegated grant after this long; it ends with the
	// delegator's in any case.
	TTL time.Duration
}

// Delegate derives a grant of owner:name for the identity to from the
// caller's own grant, which fd must be (what the caller acquired). The
// delegate acquires it as owner:name. Policy must allow it (delegate_to
// of the caller's grant); revoking the caller's grant revokes it too.
func (c *Client) Delegate(owner, name string, fd int, to string, opts *DelegateOptions) (*Grant, error) {
	if opts == nil {
		opts = &DelegateOptions{}
	}
	r, err := restriction(opts.Restrict)
	if err != nil {
		return nil, fmt.Errorf("delegate %s:%s: %w", owner, name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpDelegate, proto.CodeOK)
	m.String(proto.AttrOwner, owner)
	m.String(proto.AttrName, name)
	m.String(proto.AttrGrantee, to)
	if r != 0 {
		m.U32(proto.AttrRestrict, uint32(r))
	}
	if opts.TTL > 0 {
		m.U64(proto.AttrTTL, uint64(max(opts.TTL.Milliseconds(), 1)))
	}
	c.out = m.Bytes()
	attrs, _, err := c.roundTrip(proto.OpDelegate, fd)
	if err != nil {
		return nil, fmt.Errorf("delegate %s:%s to %s: %w", owner, name, to, err)
	}
	g, err := decodeGrant(attrs, owner, name)
	if err != nil {
		return nil, fmt.Errorf("delegate %s:%s: %w", owner, name, err)
	}
	return &g, nil
}

// AcquiredGrant is what AcquireGrant says about the fd it returns.
type AcquiredGrant struct {
	// Grant is "" when the consumer got the entry's own description.
	Grant, Parent string
	Depth         int
	Restrict      []string
	Enforcement   string
}

// AcquireGrant is AcquireFD that also reports which grant the fd is.
func (c *Client) AcquireGrant(owner, name string) (int, *AcquiredGrant, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpAcquire, proto.CodeOK)
	m.String(proto.AttrOwner, owner)
	m.String(proto.AttrName, name)
	c.out = m.Bytes()
	return c.acquired(owner, name)
}

// acquired sends the acquire request in c.out and decodes its reply.
func (c *Client) acquired(owner, name string) (int, *AcquiredGrant, error) {
	attrs, fd, err := c.roundTrip(proto.OpAcquire, -1)
	if err != nil {
		return -1, nil, fmt.Errorf("acquire %s:%s: %w", owner, name, err)
	}
	g, err := decodeGrant(attrs, owner, name)
	if err != nil {
		closeAll([]int{fd})
		return -1, nil, fmt.Errorf("acquire %s:%s: %w", owner, name, err)
	}
	a := &AcquiredGrant{Grant: g.ID, Parent: g.Parent, Depth: g.Depth, Restrict: g.Restrict}
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		if t == proto.AttrEnforcement {
			a.Enforcement = string(v)
		}
	}
	return fd, a, nil
}

// restriction reads restriction names.
func restriction(names []string) (proto.Restrict, error) {
	var r proto.Restrict
	for _, n := range names {
		b, err := proto.ParseRestrict(n)
		if err != nil {
			return 0, err
		}
		if b&(proto.RestrictOwn|proto.RestrictKeep) != 0 {
			return 0, fmt.Errorf("restriction %q: want read-only, nosuid, nodev or noexec", n)
		}
		r |= b
	}
	return r, nil
}
