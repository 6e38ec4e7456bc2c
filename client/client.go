package client

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// DefaultSocket is the agent's socket unless CAPD_SOCKET says otherwise.
const DefaultSocket = "/run/capd/capd.sock"

// SocketPath returns $CAPD_SOCKET, or DefaultSocket when it is unset.
func SocketPath() string {
	if p := os.Getenv("CAPD_SOCKET"); p != "" {
		return p
	}
	return DefaultSocket
}

// Client is a connection to the agent.
type Client struct {
	path     string
	timeout  time.Duration
	deadline time.Time

	mu     sync.Mutex
	fd     int  // -1 once closed
	broken bool // fd may hold a late reply: reconnect before the next request
	in     []byte
	out    []byte
	oob    []byte
}

// Dial connects to the agent at path ("" means SocketPath()).
func Dial(path string) (*Client, error) {
	return DialDeadline(path, time.Time{})
}

// DialDeadline is Dial with a deadline (see SetDeadline) that bounds
// connecting as well as every request on the client: whatever has not
// ended by deadline fails with an error matching ErrTimeout. The zero
// deadline means none.
func DialDeadline(path string, deadline time.Time) (*Client, error) {
	if path == "" {
		path = SocketPath()
	}
	c := &Client{
		path:     path,
		deadline: deadline,
		in:       make([]byte, proto.MaxResponse),
		out:      make([]byte, 0, 512),
		oob:      make([]byte, fdpass.OOBSize(4)),
	}
	fd, err := c.connect()
	if err != nil {
		return nil, err
	}
	c.fd = fd
	return c, nil
}

// connect opens a new connection, with the socket timeouts armed before
// connect(2) (SO_SNDTIMEO bounds waiting for room in a full backlog).
func (c *Client) connect() (int, error) {
	fd, err := linux.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		return -1, err
	}
	if err := c.arm(fd); err != nil {
		linux.Close(fd)
		return -1, fmt.Errorf("connect to capd agent at %s: %w", c.path, err)
	}
	if err := linux.Connect(fd, &unix.SockaddrUnix{Name: c.path}); err != nil {
		linux.Close(fd)
		return -1, fmt.Errorf("connect to capd agent at %s: %w", c.path, c.timedOut(err))
	}
	return fd, nil
}

// arm sets the socket timeouts of fd for the next blocking call: the
// request timeout, or what is left before the deadline if that is less.
// With the deadline passed it fails with ErrTimeout at once. Callers hold
// c.mu (or own fd alone).
func (c *Client) arm(fd int) error {
	d := c.timeout
	if !c.deadline.IsZero() {
		left := time.Until(c.deadline)
		if left <= 0 {
			return ErrTimeout
		}
		if d == 0 || left < d {
			d = left
		}
	} else if d == 0 {
		return nil // a new socket has no timeouts; SetTimeout(0) clears them
	}
	return setTimeouts(fd, d)
}

func setTimeouts(fd int, d time.Duration) error {
	if d > 0 && d < time.Microsecond {
		d = time.Microsecond // a zero timeval means no timeout at all
	}
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := linux.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	return linux.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
}

// timedOut marks err as ErrTimeout when it is the EAGAIN that a socket
// timeout raises (the socket is blocking, so EAGAIN means nothing else).
func (c *Client) timedOut(err error) error {
	if (c.timeout > 0 || !c.deadline.IsZero()) && errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("%w (%w)", ErrTimeout, err)
	}
	return err
}

// SetTimeout bounds how long each blocking step of a request (connecting
// again, sending, receiving the reply) may wait for the agent (0: no
// bound). A request that times out fails with an error matching
// ErrTimeout, os.ErrDeadlineExceeded and EAGAIN.
func (c *Client) SetTimeout(d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timeout = d
	if c.fd < 0 {
		return ErrClosed
	}
	if c.deadline.IsZero() {
		return setTimeouts(c.fd, d)
	}
	return nil // armed before every call
}

// SetDeadline bounds the whole of every later request, however many steps
// it takes, to end by t (the zero time: no deadline). A request that would
// go on past it fails with an error matching ErrTimeout and
// os.ErrDeadlineExceeded. A deadline and SetTimeout combine: the tighter
// bound applies.
func (c *Client) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	if c.fd < 0 {
		return ErrClosed
	}
	if t.IsZero() {
		return setTimeouts(c.fd, c.timeout)
	}
	return nil // armed before every call
}

// Close closes the connection. Files acquired earlier stay open.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return ErrClosed
	}
	err := linux.Close(c.fd)
	c.fd = -1
	return err
}

// roundTrip sends the request in c.out (with sendFD unless it is -1) and
// returns the reply's attributes and fd (-1 if none; the caller owns it).
// The agent closes idle connections, so a request that finds the connection
// gone before the agent read it is sent once more on a new connection.
// Callers hold c.mu.
func (c *Client) roundTrip(op proto.Op, sendFD int) ([]byte, int, error) {
	if c.fd < 0 {
		return nil, -1, ErrClosed
	}
	for attempt := 0; ; attempt++ {
		if c.broken {
			nfd, err := c.connect()
			if err != nil {
				return nil, -1, err
			}
			linux.Close(c.fd)
			c.fd, c.broken = nfd, false
		}
		attrs, fd, err := c.try(op, sendFD)
		if !errors.Is(err, errStale) {
			return attrs, fd, err
		}
		c.broken = true
		if attempt > 0 || (errors.Is(err, errMaybeDone) && !readOnly(op)) {
			// A request that changes state may have been applied before
			// the agent went away: retrying could fail misleadingly
			// (exists, not-found) or apply it twice.
			return nil, -1, fmt.Errorf("%s: agent closed the connection without a reply; the request may or may not have taken effect", op)
		}
	}
}

var (
	// errStale marks a connection the agent closed before reading the
	// request: it is safe to send again on a new one.
	errStale = errors.New("stale connection")
	// errMaybeDone marks a connection that closed after the request was
	// sent: the agent may have acted on it.
	errMaybeDone = fmt.Errorf("%w after the request was sent", errStale)
)

func readOnly(op proto.Op) bool {
	return op == proto.OpAcquire || op == proto.OpList || op == proto.OpWhoami || op == proto.OpStatus || op == proto.OpRegister || op == proto.OpAudit || op == proto.OpReload
}

// try makes one request on c.fd. Any failure that could leave a reply
// unread (a timeout, a reply that does not match) marks the connection
// broken, so that a late reply is never taken for the next request's.
func (c *Client) try(op proto.Op, sendFD int) ([]byte, int, error) {
	if err := c.armDeadline(); err != nil {
		return nil, -1, fmt.Errorf("%s: send request: %w", op, err)
	}
	var err error
	if sendFD >= 0 {
		err = fdpass.Send(c.fd, c.out, sendFD)
	} else {
		err = fdpass.Send(c.fd, c.out)
	}
	var fdbuf [4]int
	var n int
	var fds []int
	if err != nil {
		if !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.ECONNRESET) && !errors.Is(err, unix.ENOTCONN) {
			c.broken = true
			return nil, -1, fmt.Errorf("%s: send request: %w", op, c.timedOut(err))
		}
		// The agent closed the connection; it may have said why first (a
		// busy reply when it is at its connection limit).
		n, fds, err = fdpass.RecvFlags(c.fd, c.in, c.oob, fdbuf[:0], 1, unix.MSG_DONTWAIT)
		if err != nil || n == 0 {
			closeAll(fds)
			return nil, -1, errStale
		}
	} else {
		if err := c.armDeadline(); err != nil {
			// The request went out: the reply may come late, so never
			// read another request's reply from this connection.
			c.broken = true
			return nil, -1, fmt.Errorf("%s: receive reply: %w", op, err)
		}
		n, fds, err = fdpass.Recv(c.fd, c.in, c.oob, fdbuf[:0], 1)
		if err != nil {
			c.broken = true
			if errors.Is(err, unix.ECONNRESET) {
				// The agent closed the socket with the request unread.
				return nil, -1, errStale
			}
			return nil, -1, fmt.Errorf("%s: receive reply: %w", op, c.timedOut(err))
		}
		if n == 0 && len(fds) == 0 {
			return nil, -1, errMaybeDone
		}
	}
	h, attrs, err := proto.ParseHeader(c.in[:n])
	if err == nil && h.Op != op && h.Op != 0 {
		err = fmt.Errorf("%w: reply to %s is for %s", ErrProtocol, op, h.Op)
	}
	if err != nil {
		c.broken = true
		closeAll(fds)
		return nil, -1, err
	}
	if h.Code != proto.CodeOK {
		if h.Op == 0 {
			// Replies to no request in particular (busy, cannot identify)
			// come before the agent closes the connection.
			c.broken = true
		}
		closeAll(fds)
		return nil, -1, &proto.Error{Code: h.Code, Message: message(attrs)}
	}
	if (op != proto.OpAcquire && op != proto.OpAudit) || len(fds) != 1 {
		closeAll(fds)
		if op == proto.OpAcquire || op == proto.OpAudit {
			c.broken = true
			return nil, -1, fmt.Errorf("%w: %s reply carries %d fds", ErrProtocol, op, len(fds))
		}
		return attrs, -1, nil
	}
	return attrs, fds[0], nil
}

// armDeadline re-arms c.fd's timeouts before a blocking call when a
// deadline is set (the time left shrinks); without one, the timeouts set
// at connect and by SetTimeout stay.
func (c *Client) armDeadline() error {
	if c.deadline.IsZero() {
		return nil
	}
	return c.arm(c.fd)
}

func closeAll(fds []int) {
	for _, fd := range fds {
		linux.Close(fd)
	}
}

func message(attrs []byte) string {
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		if t == proto.AttrMessage {
			return string(v)
		}
	}
	return ""
}

// PublishOptions refine a publish. The zero value publishes an unpinned,
// unlimited entry that policy alone governs.
type PublishOptions struct {
	// Pin keeps the entry after the owner's cgroup empties.
	Pin bool
	// TTL revokes the entry after this long (timed authorization); 0 means
	// no expiry. The agent works in milliseconds.
	TTL time.Duration
	// Allow narrows who may acquire the entry: identity patterns, of which
	// a consumer must match one, on top of the admin's policy.
	Allow []string
	// Replace atomically replaces a live entry of the same name instead of
	// failing with ErrExists.
	Replace bool
	// PerConsumer gives each consumer (identity and uid) a grant of its
	// own: its own open file description (a memfd or regular file
	// reopened, a directory as a detached mount that ".." cannot leave),
	// which Check tells apart and RevokeGrant revokes alone. Sockets,
	// pipes and other shared kinds are refused.
	PerConsumer bool
	// Restrict is what each consumer's grant withholds, of "read-only"
	// and, for directories, "nosuid", "nodev", "noexec"; it implies
	// PerConsumer. A read-only memfd must be sealed against writes.
	Restrict []string
	// KeepPublisher exempts the publisher's own cgroup from a revoke that
	// the kernel enforces: its processes keep using the file.
	KeepPublisher bool
}

// Publish stores a dup of f's open file description under name, owned by
// the caller's identity. f stays the caller's.
func (c *Client) Publish(name string, f *os.File, opts *PublishOptions) error {
	if opts == nil {
		opts = &PublishOptions{}
	}
	if err := proto.ValidName(name); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if opts.TTL < 0 || (opts.TTL > 0 && opts.TTL < time.Millisecond) {
		return fmt.Errorf("publish %s: ttl %v is not a positive number of milliseconds", name, opts.TTL)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpPublish, proto.CodeOK)
	m.String(proto.AttrName, name)
	var flags uint32
	if opts.Pin {
		flags |= proto.FlagPin
	}
	if opts.Replace {
		flags |= proto.FlagReplace
	}
	m.U32(proto.AttrFlags, flags)
	if opts.TTL > 0 {
		m.U64(proto.AttrTTL, uint64(opts.TTL.Milliseconds()))
	}
	for _, a := range opts.Allow {
		m.String(proto.AttrAllow, a)
	}
	r, err := restriction(opts.Restrict)
	if err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	if opts.PerConsumer || r != 0 {
		r |= proto.RestrictOwn
	}
	if opts.KeepPublisher {
		r |= proto.RestrictKeep
	}
	if r != 0 {
		m.U32(proto.AttrRestrict, uint32(r))
	}
	c.out = m.Bytes()
	if len(c.out) > proto.MaxRequest {
		return fmt.Errorf("publish %s: request of %d bytes exceeds %d (too many or too long allow patterns)", name, len(c.out), proto.MaxRequest)
	}
	var rerr error
	err = raw.Control(func(fd uintptr) {
		_, _, rerr = c.roundTrip(proto.OpPublish, int(fd))
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	return nil
}

// Acquire returns a new file sharing the open file description published as
// owner:name. The caller owns it. Use its SyscallConn rather than Fd when
// handing it on: Fd puts a non-blocking file into blocking mode, and that
// mode belongs to the open file description, so it would change for the
// publisher and every other holder too.
func (c *Client) Acquire(owner, name string) (*os.File, error) {
	fd, err := c.AcquireFD(owner, name)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), owner+":"+name), nil
}

// AcquireFD is Acquire returning the bare fd (O_CLOEXEC), for callers that
// only pass it on (exec, SCM_RIGHTS) and do no Go I/O on it. It saves the
// fcntl that os.NewFile makes and never touches the fd's flags. The caller
// owns the fd and must close it exactly once.
func (c *Client) AcquireFD(owner, name string) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpAcquire, proto.CodeOK)
	m.String(proto.AttrOwner, owner)
	m.String(proto.AttrName, name)
	c.out = m.Bytes()
	_, fd, err := c.roundTrip(proto.OpAcquire, -1)
	if err != nil {
		return -1, fmt.Errorf("acquire %s:%s: %w", owner, name, err)
	}
	return fd, nil
}

// AcquireFDWait is AcquireFD that, while the entry is not published, waits
// for it up to wait (forever if wait < 0): the agent answers as soon as it
// is published (an event, not polling; one request waits at most
// proto.MaxWait, and the client asks again until its deadline). A refusal
// by policy comes at once, whether the entry exists or not.
func (c *Client) AcquireFDWait(owner, name string, wait time.Duration) (int, error) {
	fd, _, err := c.AcquireGrantWait(owner, name, wait)
	return fd, err
}

// AcquireGrantWait is AcquireFDWait that also reports which grant the fd
// is (see AcquireGrant).
func (c *Client) AcquireGrantWait(owner, name string, wait time.Duration) (int, *AcquiredGrant, error) {
	if wait == 0 {
		return c.AcquireGrant(owner, name)
	}
	var deadline time.Time
	if wait >= 0 {
		deadline = time.Now().Add(wait)
	}
	for {
		round := proto.MaxWait * time.Millisecond
		if !deadline.IsZero() {
			round = min(round, time.Until(deadline))
		}
		fd, g, err := c.acquireWait(owner, name, max(round, 0))
		if err == nil || !errors.Is(err, ErrNotFound) || (!deadline.IsZero() && !time.Now().Before(deadline)) {
			return fd, g, err
		}
	}
}

func (c *Client) acquireWait(owner, name string, wait time.Duration) (int, *AcquiredGrant, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpAcquire, proto.CodeOK)
	m.String(proto.AttrOwner, owner)
	m.String(proto.AttrName, name)
	m.U64(proto.AttrWait, uint64(wait.Milliseconds()))
	c.out = m.Bytes()
	return c.acquired(owner, name)
}

// AcquireRef is Acquire with an "OWNER:NAME" reference.
func (c *Client) AcquireRef(ref string) (*os.File, error) {
	owner, name, err := proto.SplitRef(ref)
	if err != nil {
		return nil, fmt.Errorf("acquire: %w", err)
	}
	return c.Acquire(owner, name)
}

// Revoke removes the caller's entry name. Copies already handed out stay
// open in their holders; see Token for capabilities that stop verifying.
func (c *Client) Revoke(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpRevoke, proto.CodeOK)
	m.String(proto.AttrName, name)
	c.out = m.Bytes()
	if _, _, err := c.roundTrip(proto.OpRevoke, -1); err != nil {
		return fmt.Errorf("revoke %s: %w", name, err)
	}
	return nil
}

// RevokeOwner removes owner's entry name: root's way to remove entries of
// any owner (a pinned entry whose service is gone, for instance). Other
// callers may name only their own identity ("" means the caller's).
func (c *Client) RevokeOwner(owner, name string) error {
	return c.revoke(owner, name, 0)
}

// RevokeShutdown revokes a socket entry after shutting the socket down
// (SHUT_RDWR): every copy handed out, in every holder, stops working, which
// closing the agent's copy alone cannot do. Entries of other kinds are
// refused with ErrInvalidRequest. owner "" means the caller's.
func (c *Client) RevokeShutdown(owner, name string) error {
	return c.revoke(owner, name, proto.FlagShutdown)
}

func (c *Client) revoke(owner, name string, flags uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpRevoke, proto.CodeOK)
	if owner != "" {
		m.String(proto.AttrOwner, owner)
	}
	m.String(proto.AttrName, name)
	if flags != 0 {
		m.U32(proto.AttrFlags, flags)
	}
	c.out = m.Bytes()
	if _, _, err := c.roundTrip(proto.OpRevoke, -1); err != nil {
		if owner == "" {
			return fmt.Errorf("revoke %s: %w", name, err)
		}
		return fmt.Errorf("revoke %s:%s: %w", owner, name, err)
	}
	return nil
}

// Identity is who the agent sees on this connection.
type Identity struct {
	Name   string `json:"identity"`
	Cgroup string `json:"cgroup"`
	UID    uint32 `json:"uid"`
	PID    uint32 `json:"pid"`
}

// Whoami asks the agent for the caller's identity.
func (c *Client) Whoami() (Identity, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpWhoami, proto.CodeOK)
	c.out = m.Bytes()
	attrs, _, err := c.roundTrip(proto.OpWhoami, -1)
	if err != nil {
		return Identity{}, fmt.Errorf("whoami: %w", err)
	}
	var id Identity
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		switch t {
		case proto.AttrIdentity:
			id.Name = string(v)
		case proto.AttrCgroup:
			id.Cgroup = string(v)
		case proto.AttrUID:
			id.UID, err = proto.U32(v)
		case proto.AttrPID:
			id.PID, err = proto.U32(v)
		}
		if err != nil {
			return Identity{}, fmt.Errorf("whoami: %w", err)
		}
	}
	if err := it.Err(); err != nil {
		return Identity{}, fmt.Errorf("whoami: %w", err)
	}
	return id, nil
}

// Entry describes a stored entry as List reports it.
type Entry struct {
	Owner     string    `json:"owner"`
	Name      string    `json:"name"`
	Pinned    bool      `json:"pinned"`
	Kind      string    `json:"kind"`
	Cgroup    string    `json:"cgroup"`
	Published time.Time `json:"published"`
	// Expires is zero for entries without a TTL.
	Expires  time.Time `json:"expires,omitzero"`
	Acquired uint64    `json:"acquired"`
	Allow    []string  `json:"allow,omitempty"`
	// Restrict lists what each consumer's grant withholds
	// ("per-consumer", "read-only", ...); empty: consumers share the
	// entry's description.
	Restrict []string `json:"restrict"`
	// Enforcement is what a revoke does: "enforced" (the kernel refuses
	// every holder), "advisory" (the agent stops handing it out and
	// verifying it).
	Enforcement string `json:"enforcement"`
	// Grants are the entry's grants the caller may see, parents before
	// the grants delegated from them.
	Grants []Grant `json:"grants"`
}

// List returns the entries the caller may see: its own and those it may
// acquire; root sees all. Sorted by owner, then name.
func (c *Client) List() ([]Entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var all []Entry
	after := ""
	for {
		m := proto.NewMessage(c.out, proto.OpList, proto.CodeOK)
		if after != "" {
			m.String(proto.AttrAfter, after)
		}
		c.out = m.Bytes()
		attrs, _, err := c.roundTrip(proto.OpList, -1)
		if err != nil {
			return nil, fmt.Errorf("list: %w", err)
		}
		more := false
		it := proto.Attrs(attrs)
		for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
			switch t {
			case proto.AttrEntry:
				e, err := decodeEntry(v)
				if err != nil {
					return nil, fmt.Errorf("list: %w", err)
				}
				all = append(all, e)
			case proto.AttrMore:
				more = true
			}
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("list: %w", err)
		}
		if !more || len(all) == 0 {
			return all, nil
		}
		last := all[len(all)-1]
		after = last.Owner + ":" + last.Name
	}
}

func decodeEntry(b []byte) (Entry, error) {
	var e Entry
	var err error
	var u uint64
	var flags uint32
	it := proto.Attrs(b)
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch t {
		case proto.AttrOwner:
			e.Owner = string(v)
		case proto.AttrName:
			e.Name = string(v)
		case proto.AttrFlags:
			flags, err = proto.U32(v)
			e.Pinned = flags&proto.FlagPin != 0
		case proto.AttrKind:
			e.Kind = string(v)
		case proto.AttrCgroup:
			e.Cgroup = string(v)
		case proto.AttrPublished:
			u, err = proto.U64(v)
			e.Published = time.UnixMilli(int64(u))
		case proto.AttrExpires:
			u, err = proto.U64(v)
			e.Expires = time.UnixMilli(int64(u))
		case proto.AttrAcquired:
			e.Acquired, err = proto.U64(v)
		case proto.AttrAllow:
			e.Allow = append(e.Allow, string(v))
		case proto.AttrRestrict:
			flags, err = proto.U32(v)
			e.Restrict = proto.Restrict(flags).Names()
		case proto.AttrEnforcement:
			e.Enforcement = string(v)
		case proto.AttrGrantInfo:
			var g Grant
			if g, err = decodeGrant(v, e.Owner, e.Name); err == nil {
				e.Grants = append(e.Grants, g)
			}
		}
	}
	if err == nil {
		err = it.Err()
	}
	if e.Restrict == nil {
		e.Restrict = []string{}
	}
	if e.Grants == nil {
		e.Grants = []Grant{}
	}
	return e, err
}
