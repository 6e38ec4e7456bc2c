package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/audit"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// maxRecvFDs sizes the control buffer: room for more fds than any request
// may carry, so that surplus fds are told apart from truncation.
const maxRecvFDs = 8

type conn struct {
	srv  *Server
	acct uint32 // the accounting uid admission counted the connection against
	// cred and pidfd (or pidfdErr) are the peer as admission read it; serve
	// identifies the peer with them and closes pidfd.
	cred     *unix.Ucred
	pidfd    linux.FD
	pidfdErr error
	log      *slog.Logger // rate-limited per accounting uid
	peer     peer
	// ownerID is the id of the peer's owner cgroup, once ownerCgroupID
	// looked it up (ownerIDRead).
	ownerID     uint64
	ownerIDRead bool

	// sock owns the socket. A connection waiting for its next request
	// holds a thread for at most a tick after a reply, then a goroutine
	// parked on the Go runtime's poller (see fdpass.Conn).
	sock *fdpass.Conn
}

// shutdown wakes the connection's waiting Recv; serve then answers a
// request still queued with busy and closes. Only the receiving side is
// shut: the busy reply can still be sent, and the client's later sends
// fail (EPIPE) instead of queueing. Once the socket is closed it does
// nothing.
func (c *conn) shutdown() { c.sock.Shutdown(unix.SHUT_RD) }

// authorize asks the one decision whether the caller may act on t, and
// turns a refusal into a permission-denied error carrying the reason,
// which it also logs.
func (c *conn) authorize(cfg *policy.Config, act policy.Action, t *policy.Target) error {
	_, err := c.decide(cfg, act, t)
	return err
}

// decide is authorize returning the decision too.
func (c *conn) decide(cfg *policy.Config, act policy.Action, t *policy.Target) (policy.Decision, error) {
	d := cfg.Authorize(&c.peer.Caller, act, t)
	if d.Allowed {
		return d, nil
	}
	c.srv.stats.denied(act, d.Class)
	args := []any{"action", act.String(), "identity", c.peer.Identity, "uid", c.peer.UID, "pid", c.peer.PID, "reason", d.Reason}
	if t != nil {
		args = append(args, "entry", t.Owner+":"+t.Name)
	}
	c.log.Info("denied", args...)
	return d, &proto.Error{Code: proto.CodePermissionDenied, Message: d.Reason}
}

func (c *conn) serve(cfg *policy.Config) {
	defer c.srv.forget(c)
	defer c.sock.Close()
	log := c.srv.log
	c.sock.SetRecvTimeout(time.Duration(cfg.Agent.IdleTimeout))
	c.sock.SetSendTimeout(time.Duration(cfg.Agent.SendTimeout))

	in := make([]byte, proto.MaxRequest)
	out := make([]byte, 0, 512)
	oob := make([]byte, fdpass.OOBSize(maxRecvFDs))
	var fdbuf [maxRecvFDs]int
	var reqFD linux.FD // the fd of the request being handled

	id, err := resolvePeer(c.cred, c.pidfd.Int(), c.pidfdErr, c.srv.resolver, c.srv.reg, c.srv.host)
	c.pidfd.Close()
	if err != nil {
		c.srv.stats.refused[refusedUnidentified].Add(1)
		log.Warn("cannot identify client; closing", "err", err)
		m := proto.NewMessage(out, 0, proto.CodePermissionDenied)
		m.String(proto.AttrMessage, "the agent cannot identify this client: "+err.Error())
		c.sock.Send(m.Bytes())
		return
	}
	id.Acct = c.acct
	c.peer = id
	debug := log.Enabled(context.Background(), slog.LevelDebug)
	if debug {
		log.Debug("client connected", "identity", id.Identity, "uid", id.UID, "pid", id.PID, "host_admin", id.HostAdmin())
	}

	for {
		n, fds, err := c.sock.Recv(in, oob, fdbuf[:0], 1)
		if err != nil {
			var reason string
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				if debug {
					log.Debug("closing idle connection", "identity", id.Identity, "pid", id.PID)
				}
				return
			case errors.Is(err, fdpass.ErrTruncated):
				reason = fmt.Sprintf("request larger than %d bytes", proto.MaxRequest)
			case errors.Is(err, fdpass.ErrTooManyFDs), errors.Is(err, fdpass.ErrControlTruncated):
				reason = "a request carries at most one fd"
			case errors.Is(err, fdpass.ErrUnexpectedControl):
				reason = "only SCM_RIGHTS control messages are accepted"
			default:
				return // peer vanished or connection shut down
			}
			log.Info("bad request; closing connection", "identity", id.Identity, "pid", id.PID, "reason", reason)
			m := proto.NewMessage(out, 0, proto.CodeInvalidRequest)
			m.String(proto.AttrMessage, reason)
			c.sock.Send(m.Bytes())
			return
		}
		if n == 0 && len(fds) == 0 {
			return // orderly close
		}
		if c.srv.draining() {
			// A request queued when the agent began to stop: not acted on,
			// so the client may safely send it again (to the next agent).
			for _, fd := range fds {
				linux.Close(fd)
			}
			m := proto.NewMessage(out[:0], 0, proto.CodeBusy)
			m.String(proto.AttrMessage, "agent is shutting down; the request was not acted on")
			c.sock.Send(m.Bytes())
			return
		}
		if len(fds) == 1 {
			reqFD.Own(fds[0])
		}
		r := c.handle(c.srv.cfg.Load(), in[:n], &reqFD, out[:0])
		reqFD.Close() // unless a handler took it
		switch {
		case r.entry != nil:
			err = c.sock.Send(r.msg, r.entry.FD())
			c.srv.store.Release(r.entry)
		case r.file != nil:
			err = c.sock.Send(r.msg, r.file.Int())
			r.file.Close()
		default:
			err = c.sock.Send(r.msg)
		}
		out = r.msg[:0]
		if err != nil || r.fatal {
			return
		}
	}
}

// reply is the answer to one request: its message and at most one fd to
// send with it, which the connection gives up after sending: an acquired
// entry's reference (released) or a file of the reply's own (closed).
// fatal asks the connection to close after replying.
type reply struct {
	msg   []byte
	entry *store.Entry
	file  *linux.FD
	fatal bool
}

func message(m proto.Builder) reply { return reply{msg: m.Bytes()} }

// handle answers one request. The fd the request carried, if any, is in
// reqFD: a handler that keeps it takes it (Release); the caller closes
// whatever is left.
func (c *conn) handle(cfg *policy.Config, req []byte, reqFD *linux.FD, out []byte) reply {
	h, attrs, err := proto.ParseHeader(req)
	if err == nil && h.Code != proto.CodeOK {
		err = proto.Errorf(proto.CodeInvalidRequest, "a request's code field must be 0, not %d", h.Code)
	}
	if err == nil && h.Op != proto.OpPublish && h.Op != proto.OpRegister && h.Op != proto.OpCheck && h.Op != proto.OpDelegate && reqFD.Valid() {
		err = proto.Errorf(proto.CodeInvalidRequest, "%s takes no fd", h.Op)
	}
	if err == nil {
		switch h.Op {
		case proto.OpAcquire:
			var e *store.Entry
			if e, err = c.acquire(cfg, attrs); err == nil {
				m := proto.NewMessage(out, proto.OpAcquire, proto.CodeOK)
				c.describeGrant(&m, e)
				r := message(m)
				r.entry = e
				return r
			}
		case proto.OpCheck:
			var m proto.Builder
			if m, err = c.check(cfg, attrs, reqFD, out); err == nil {
				return message(m)
			}
		case proto.OpDelegate:
			var m proto.Builder
			if m, err = c.delegate(cfg, attrs, reqFD, out); err == nil {
				return message(m)
			}
		case proto.OpPublish:
			err = c.publish(cfg, attrs, reqFD)
		case proto.OpRevoke:
			err = c.revoke(cfg, attrs)
		case proto.OpRegister:
			var m proto.Builder
			if m, err = c.register(cfg, attrs, reqFD, out); err == nil {
				return message(m)
			}
		case proto.OpUnregister:
			err = c.unregister(cfg, attrs)
		case proto.OpAudit:
			if len(attrs) > 0 {
				err = proto.Errorf(proto.CodeInvalidRequest, "audit takes no attributes")
				break
			}
			if err = c.authorize(cfg, policy.Audit, nil); err != nil {
				break
			}
			var rep *proto.AuditReport
			fd := -1
			if rep, err = c.srv.audit(); err == nil {
				fd, err = audit.Report(rep)
			}
			if err == nil {
				r := message(proto.NewMessage(out, proto.OpAudit, proto.CodeOK))
				r.file = linux.NewFD(fd)
				return r
			}
		case proto.OpStatus:
			var m proto.Builder
			if m, err = c.status(cfg, attrs, out); err == nil {
				return message(m)
			}
		case proto.OpList:
			var m proto.Builder
			if m, err = c.list(cfg, attrs, out); err == nil {
				return message(m)
			}
		case proto.OpReload:
			var m proto.Builder
			if m, err = c.reload(cfg, attrs, out); err == nil {
				return message(m)
			}
		case proto.OpWhoami:
			m := proto.NewMessage(out, h.Op, proto.CodeOK)
			m.String(proto.AttrIdentity, c.peer.Identity)
			m.String(proto.AttrCgroup, c.peer.Cgroup)
			m.U32(proto.AttrUID, c.peer.UID)
			m.U32(proto.AttrPID, uint32(c.peer.PID))
			return message(m)
		default:
			err = proto.Errorf(proto.CodeInvalidRequest, "unknown operation %d", h.Op)
		}
	}
	if err == nil {
		return message(proto.NewMessage(out, h.Op, proto.CodeOK))
	}
	perr := wireError(err)
	if perr.Code == proto.CodeInternal {
		c.log.Error("request failed", "op", h.Op, "identity", c.peer.Identity, "err", err)
	}
	m := proto.NewMessage(out, h.Op, perr.Code)
	m.String(proto.AttrMessage, perr.Message)
	r := message(m)
	r.fatal = perr.Code == proto.CodeInvalidRequest || perr.Code == proto.CodeUnsupportedVersion
	return r
}

func badAttr(op proto.Op, t proto.Attr) error {
	return proto.Errorf(proto.CodeInvalidRequest, "%s: unexpected or repeated attribute %d", op, t)
}

// acquire returns the entry the request names, with a reference held for
// the connection, which releases it once the fd is sent.
func (c *conn) acquire(cfg *policy.Config, attrs []byte) (*store.Entry, error) {
	var owner, name string
	var wait uint64
	var haveOwner, haveName, haveWait bool
	var err error
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch {
		case t == proto.AttrOwner && !haveOwner:
			owner, haveOwner = string(v), true
		case t == proto.AttrName && !haveName:
			name, haveName = string(v), true
		case t == proto.AttrWait && !haveWait:
			wait, err = proto.U64(v)
			haveWait = true
		default:
			return nil, badAttr(proto.OpAcquire, t)
		}
	}
	if err == nil {
		err = it.Err()
	}
	if err != nil {
		return nil, err
	}
	if !haveOwner || !haveName {
		return nil, proto.Errorf(proto.CodeInvalidRequest, "acquire needs an owner and a name")
	}
	if err := proto.ValidName(name); err != nil {
		return nil, proto.Errorf(proto.CodeInvalidRequest, "acquire: %v", err)
	}
	deadline := time.Now().Add(time.Duration(min(wait, proto.MaxWait)) * time.Millisecond)
	for {
		e, ready, done := c.srv.store.AcquireOrWait(owner, name)
		if e != nil {
			d, err := c.decide(cfg, policy.Acquire, e.Target())
			if err != nil {
				c.srv.store.Release(e)
				if g := c.delegatedFor(cfg, owner, name); g != nil {
					e, d = g, policy.Decision{Allowed: true}
				} else {
					return nil, err
				}
			}
			if e, err = c.grantFor(cfg, e, d.Restrict); err != nil {
				return nil, err
			}
			e.CountAcquire()
			c.srv.stats.acquires.Add(1)
			if c.log.Enabled(context.Background(), slog.LevelDebug) {
				c.log.Debug("acquired", "consumer", c.peer.Identity, "pid", c.peer.PID, "entry", owner+":"+name)
			}
			return e, nil
		}
		// Policy first, so that a refusal does not tell whether it exists
		// (asked as if the caller had published it: its own names are no
		// secret to it).
		if err := c.authorize(cfg, policy.Acquire, &policy.Target{Owner: owner, Name: name, UID: c.peer.UID}); err != nil {
			done()
			return nil, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			done()
			return nil, proto.Errorf(proto.CodeNotFound, "%s:%s is not published", owner, name)
		}
		// Wait for a publish of the name (an event, no polling), the
		// deadline, or the agent stopping.
		t := time.NewTimer(left)
		select {
		case <-ready:
		case <-t.C:
		case <-c.srv.quit:
			t.Stop()
			done()
			return nil, proto.Errorf(proto.CodeBusy, "agent is shutting down")
		}
		t.Stop()
		done()
		cfg = c.srv.cfg.Load()
	}
}

// publish stores the request's fd under the caller's identity, taking it
// from reqFD.
func (c *conn) publish(cfg *policy.Config, attrs []byte, reqFD *linux.FD) error {
	if !reqFD.Valid() {
		return proto.Errorf(proto.CodeInvalidRequest, "publish needs exactly one fd")
	}
	if err := c.authorize(cfg, policy.Publish, nil); err != nil {
		return err
	}
	if len(c.peer.Identity) > proto.MaxIdentity {
		return proto.Errorf(proto.CodePermissionDenied, "identity %.64q... is longer than %d bytes and cannot own entries", c.peer.Identity, proto.MaxIdentity)
	}
	var name string
	var allow []policy.Pattern
	var flags, restrict uint32
	var ttl uint64
	var haveName, haveFlags, haveTTL, haveRestrict bool
	it := proto.Attrs(attrs)
	var err error
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch {
		case t == proto.AttrName && !haveName:
			name, haveName = string(v), true
		case t == proto.AttrFlags && !haveFlags:
			flags, err = proto.U32(v)
			haveFlags = true
		case t == proto.AttrTTL && !haveTTL:
			ttl, err = proto.U64(v)
			haveTTL = true
		case t == proto.AttrAllow && len(allow) < proto.MaxAllow:
			if err = policy.ValidPattern(string(v)); err == nil {
				allow = append(allow, policy.Pattern(v))
			}
		case t == proto.AttrRestrict && !haveRestrict:
			restrict, err = proto.U32(v)
			haveRestrict = true
		default:
			err = badAttr(proto.OpPublish, t)
		}
	}
	if err == nil {
		err = it.Err()
	}
	switch {
	case err != nil:
	case !haveName:
		err = fmt.Errorf("publish needs a name")
	case flags&^(proto.FlagPin|proto.FlagReplace) != 0:
		err = fmt.Errorf("unknown publish flags %#x", flags)
	case haveTTL && (ttl == 0 || ttl > uint64((100*365*24*time.Hour).Milliseconds())):
		err = fmt.Errorf("ttl of %d ms is out of range", ttl)
	case proto.Restrict(restrict)&^proto.RestrictAll != 0:
		err = fmt.Errorf("unknown restrictions %#x", restrict)
	default:
		err = proto.ValidName(name)
	}
	if err != nil {
		var perr *proto.Error
		if errors.As(err, &perr) {
			return err
		}
		return &proto.Error{Code: proto.CodeInvalidRequest, Message: err.Error()}
	}
	sp := store.Spec{
		Owner: c.peer.Identity, Name: name, Allow: allow, Pinned: flags&proto.FlagPin != 0,
		Cgroup: c.peer.Cgroup, OwnerCgroup: c.peer.OwnerCgroup,
		UID: c.peer.UID, Acct: c.peer.Acct, Limited: !c.peer.HostAdmin(), Published: time.Now(),
	}
	sp.Kind, sp.Dev, sp.Ino, _ = linux.DescribeFD(reqFD.Int())
	if r := proto.Restrict(restrict); r != 0 {
		if r != proto.RestrictKeep {
			r |= proto.RestrictOwn
			if err := store.Derivable(sp.Kind, r); err != nil {
				return err
			}
		}
		sp.Restrict = r
	}
	if haveTTL {
		sp.Expires = sp.Published.Add(time.Duration(ttl) * time.Millisecond)
	}
	e := store.NewEntry(&sp, reqFD.Release())
	var ownerID uint64
	if !sp.Pinned {
		ownerID = c.ownerCgroupID()
	}
	mayReplace := func(old *store.Entry) error { return c.authorize(cfg, policy.Replace, old.Target()) }
	if err := c.srv.store.Publish(e, ownerID, flags&proto.FlagReplace != 0, mayReplace, c.srv.limits(cfg)); err != nil {
		return err
	}
	// Acknowledged only once systemd holds it: otherwise it is taken back.
	if err := c.srv.durable(e.ID()); err != nil {
		c.srv.store.Unpublish(e)
		c.srv.synced()
		c.log.Error("publish not acknowledged: not durable", "owner", sp.Owner, "name", name, "err", err)
		return proto.Errorf(proto.CodeInternal, "%s:%s is not published: systemd did not confirm it keeps the entry (%v); publish again", sp.Owner, name, err)
	}
	c.srv.stats.publishes.Add(1)
	c.log.Info("published", "owner", sp.Owner, "name", name, "kind", sp.Kind, "pin", sp.Pinned, "ttl", time.Duration(ttl)*time.Millisecond, "uid", sp.UID, "pid", c.peer.PID)
	return nil
}

// ownerCgroupID returns the id of the peer's owner cgroup, with which the
// store tells whether the cgroup it watches at that path is the peer's:
// the id PIDFD_GET_INFO gave for the peer's cgroup if that is the owner
// cgroup, else the inode of the owner cgroup's directory, looked up once
// per connection; 0 if neither can be had.
func (c *conn) ownerCgroupID() uint64 {
	if !c.ownerIDRead {
		c.ownerIDRead = true
		if c.peer.OwnerCgroup == c.peer.Cgroup && c.peer.CgroupID != 0 {
			c.ownerID = c.peer.CgroupID
		} else if cgroup.Watchable(c.peer.OwnerCgroup) {
			var st unix.Stat_t
			if linux.Stat(c.srv.resolver.Abs(c.peer.OwnerCgroup), &st) == nil {
				c.ownerID = st.Ino
			}
		}
	}
	return c.ownerID
}

func (c *conn) revoke(cfg *policy.Config, attrs []byte) error {
	owner, name, grant := c.peer.Identity, "", ""
	var flags uint32
	var haveName, haveOwner, haveFlags, haveGrant bool
	var err error
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch {
		case t == proto.AttrName && !haveName:
			name, haveName = string(v), true
		case t == proto.AttrGrant && !haveGrant:
			grant, haveGrant = string(v), true
		case t == proto.AttrOwner && !haveOwner:
			owner, haveOwner = string(v), true
		case t == proto.AttrFlags && !haveFlags:
			flags, err = proto.U32(v)
			haveFlags = true
		default:
			return badAttr(proto.OpRevoke, t)
		}
	}
	if err == nil {
		err = it.Err()
	}
	if err != nil {
		return err
	}
	if flags&^proto.FlagShutdown != 0 {
		return proto.Errorf(proto.CodeInvalidRequest, "unknown revoke flags %#x", flags)
	}
	if !haveName {
		return proto.Errorf(proto.CodeInvalidRequest, "revoke needs a name")
	}
	if err := proto.ValidName(name); err != nil {
		return proto.Errorf(proto.CodeInvalidRequest, "revoke: %v", err)
	}
	if haveGrant {
		if flags != 0 {
			return proto.Errorf(proto.CodeInvalidRequest, "a grant's description is its own: revoke it without shutdown")
		}
		// The holders of the grants it was delegated from may revoke it
		// too: decided with the grant in hand.
		return c.revokeGrant(cfg, owner, name, grant)
	}
	if owner != c.peer.Identity {
		// Another owner's entry: decided before looking, so that a refusal
		// does not tell whether it exists.
		if err := c.authorize(cfg, policy.Revoke, &policy.Target{Owner: owner, Name: name, UID: ^uint32(0)}); err != nil {
			return err
		}
	}
	may := func(e *store.Entry) error { return c.authorize(cfg, policy.Revoke, e.Target()) }
	id, err := c.srv.store.Revoke(owner, name, may, flags&proto.FlagShutdown != 0)
	if err != nil {
		return err
	}
	c.srv.stats.revokes.Add(1)
	if err := c.srv.durable(id); err != nil {
		return proto.Errorf(proto.CodeInternal, "%s:%s is revoked in the agent, but systemd did not confirm it dropped its copy (%v): after a restart of the agent it may come back; revoke it again then", owner, name, err)
	}
	c.log.Info("revoked", "owner", owner, "name", name, "by", c.peer.Identity, "uid", c.peer.UID, "pid", c.peer.PID, "shutdown", flags&proto.FlagShutdown != 0)
	return nil
}

// status answers root with the agent's fd usage and the cgroups that hold
// entries, their usage and limits, paged like list (the cursor is a
// cgroup path).
func (c *conn) status(cfg *policy.Config, attrs []byte, out []byte) (proto.Builder, error) {
	var after string
	var haveAfter bool
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		if t != proto.AttrAfter || haveAfter {
			return proto.Builder{}, badAttr(proto.OpStatus, t)
		}
		after, haveAfter = string(v), true
	}
	if err := it.Err(); err != nil {
		return proto.Builder{}, err
	}
	if err := c.authorize(cfg, policy.Status, nil); err != nil {
		return proto.Builder{}, err
	}
	s := c.srv
	limit, _ := s.capacity(cfg)
	open, err := linux.OpenFDs()
	if err != nil {
		return proto.Builder{}, err
	}
	m := proto.NewMessage(out, proto.OpStatus, proto.CodeOK)
	m.U64(proto.AttrEntries, uint64(s.store.Len()))
	m.U64(proto.AttrMaxEntries, uint64(s.maxEntries(cfg)))
	m.U64(proto.AttrOpenFDs, uint64(open))
	m.U64(proto.AttrFDLimit, uint64(limit))
	m.U64(proto.AttrWatched, uint64(s.watcher.Len()))
	m.U64(proto.AttrContainers, uint64(s.reg.Len()))
	m.String(proto.AttrEnforcement, s.enforcement())
	m.String(proto.AttrEnforcedBy, s.enfWhy)
	if s.enf != nil {
		m.U64(proto.AttrInForce, uint64(s.enf.e.Len()))
	}
	m.U64(proto.AttrLost, uint64(s.lost))
	for _, n := range s.store.Nodes(after) {
		mark := m.Len()
		start := m.Begin(proto.AttrNode)
		m.String(proto.AttrCgroup, n.Path)
		m.U64(proto.AttrEntries, uint64(n.Entries))
		m.U64(proto.AttrPinned, uint64(n.Pinned))
		m.U64(proto.AttrOwners, uint64(n.Owners))
		l := cfg.NodeLimits(n.Path, n.Owners > 0)
		if max := s.maxEntries(cfg); n.Path == "/" && (l.MaxEntries == policy.Unlimited || max < l.MaxEntries) {
			l.MaxEntries, l.EntriesSource = max, "max_entries"
			if max < cfg.Agent.MaxEntries {
				l.EntriesSource = s.entriesSource(cfg)
			}
		}
		if l.MaxEntries != policy.Unlimited {
			m.U64(proto.AttrMaxEntries, uint64(l.MaxEntries))
			m.String(proto.AttrEntriesSource, l.EntriesSource)
		}
		if l.MaxPinned != policy.Unlimited {
			m.U64(proto.AttrMaxPinned, uint64(l.MaxPinned))
			m.String(proto.AttrPinnedSource, l.PinnedSource)
		}
		if !endPaged(&m, start, mark) {
			break
		}
	}
	return m, nil
}

// endPaged closes the nested attribute begun at start. If the response no
// longer fits, it drops that attribute (back to mark), adds AttrMore and
// returns false: the client continues from the last one it got.
func endPaged(m *proto.Builder, start, mark int) bool {
	m.End(start)
	if m.Len() <= proto.MaxResponse-4 {
		return true
	}
	m.Truncate(mark)
	m.Empty(proto.AttrMore)
	return false
}

// list answers with the entries the caller may see, after the optional
// cursor, as many as fit in one response; AttrMore says there are more.
func (c *conn) list(cfg *policy.Config, attrs []byte, out []byte) (proto.Builder, error) {
	var after store.Key
	var haveAfter bool
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		if t != proto.AttrAfter || haveAfter {
			return proto.Builder{}, badAttr(proto.OpList, t)
		}
		owner, name, err := proto.SplitRef(string(v))
		if err != nil {
			return proto.Builder{}, proto.Errorf(proto.CodeInvalidRequest, "list cursor: %v", err)
		}
		after, haveAfter = store.Key{Owner: owner, Name: name}, true
	}
	if err := it.Err(); err != nil {
		return proto.Builder{}, err
	}
	entries := c.srv.store.Snapshot(func(e *store.Entry) bool {
		if e.IsGrant() || haveAfter && !after.Less(e.Key()) {
			return false // grants are listed with their entry
		}
		return cfg.Authorize(&c.peer.Caller, policy.See, e.Target()).Allowed
	})
	enforcement := c.srv.enforcement()
	m := proto.NewMessage(out, proto.OpList, proto.CodeOK)
	for _, e := range entries {
		mark := m.Len()
		start := m.Begin(proto.AttrEntry)
		m.String(proto.AttrOwner, e.Owner())
		m.String(proto.AttrName, e.Name())
		var flags uint32
		if e.Pinned() {
			flags |= proto.FlagPin
		}
		m.U32(proto.AttrFlags, flags)
		m.String(proto.AttrKind, e.Kind())
		m.String(proto.AttrCgroup, e.Cgroup())
		m.U64(proto.AttrPublished, uint64(e.Published().UnixMilli()))
		if exp := e.Expires(); !exp.IsZero() {
			m.U64(proto.AttrExpires, uint64(exp.UnixMilli()))
		}
		m.U64(proto.AttrAcquired, e.Acquired())
		for _, a := range e.Allow() {
			m.String(proto.AttrAllow, string(a))
		}
		if r := e.Restrict(); r != 0 {
			m.U32(proto.AttrRestrict, uint32(r))
		}
		m.String(proto.AttrEnforcement, enforcement)
		c.listGrants(cfg, &m, e)
		if !endPaged(&m, start, mark) {
			break
		}
	}
	return m, nil
}

// maxListedGrants bounds the grants one list entry carries; AttrGrants
// says how many there are.
const maxListedGrants = 100

// listGrants adds e's grants to its list entry: all of them for those who
// may check its fds (its owner, a host administrator), else only those
// made for the caller.
func (c *conn) listGrants(cfg *policy.Config, m *proto.Builder, e *store.Entry) {
	grants := c.srv.store.Grants(e)
	if len(grants) == 0 {
		return
	}
	all := cfg.Authorize(&c.peer.Caller, policy.Check, e.Target()).Allowed
	n := 0
	for _, g := range grants {
		grantee, uid := g.Grantee()
		if !all && (grantee != c.peer.Identity || uid != c.peer.UID && uid != store.AnyUID) {
			continue
		}
		if n++; n > maxListedGrants {
			continue
		}
		gs := m.Begin(proto.AttrGrantInfo)
		putGrant(m, g)
		m.U64(proto.AttrAcquired, g.Acquired())
		m.U64(proto.AttrPublished, uint64(g.Published().UnixMilli()))
		if exp := g.Expires(); !exp.IsZero() {
			m.U64(proto.AttrExpires, uint64(exp.UnixMilli()))
		}
		m.End(gs)
	}
	if n > 0 {
		m.U64(proto.AttrGrants, uint64(n))
	}
}

// reload re-reads the configuration for a host administrator and answers
// with what it loaded, or why it kept the old one.
func (c *conn) reload(cfg *policy.Config, attrs []byte, out []byte) (proto.Builder, error) {
	if len(attrs) > 0 {
		return proto.Builder{}, proto.Errorf(proto.CodeInvalidRequest, "reload takes no attributes")
	}
	if err := c.authorize(cfg, policy.Reload, nil); err != nil {
		return proto.Builder{}, err
	}
	if c.srv.reloader == nil {
		return proto.Builder{}, proto.Errorf(proto.CodeInvalidConfig, "this agent has no configuration file to reload")
	}
	next, err := c.srv.reloader()
	if err != nil {
		return proto.Builder{}, &proto.Error{Code: proto.CodeInvalidConfig, Message: err.Error() + " (the configuration in force stays)"}
	}
	m := proto.NewMessage(out, proto.OpReload, proto.CodeOK)
	for _, f := range next.Files {
		m.String(proto.AttrFile, f)
	}
	m.U64(proto.AttrGrants, uint64(len(next.Grants)))
	m.U64(proto.AttrQuotas, uint64(len(next.Quotas)))
	return m, nil
}
