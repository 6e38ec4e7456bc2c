// Package proto is capd's wire format, shared by the agent and the client
// library; docs/PROTOCOL.md is its normative description.
//
// A message is one SOCK_SEQPACKET datagram: an 8-byte header followed by
// attributes (type, length, value), all little-endian. Requests carry at most
// one fd (publish) and responses at most one (acquire), as SCM_RIGHTS.
// The package only encodes and decodes bytes; it owns no fds.
package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Version is the protocol version carried in every header.
const Version = 1

// Size bounds. A request larger than MaxRequest is rejected; responses never
// exceed MaxResponse.
const (
	HeaderSize  = 8
	MaxRequest  = 4096
	MaxResponse = 65536
	MaxName     = 255
	MaxIdentity = 1024
	MaxAllow    = 32
	MaxRefs     = 32 // entries one container may request
)

// Op is a request type.
type Op uint8

const (
	OpWhoami     Op = 1
	OpPublish    Op = 2
	OpRevoke     Op = 3
	OpAcquire    Op = 4
	OpList       Op = 5
	OpStatus     Op = 6
	OpRegister   Op = 7
	OpUnregister Op = 8
	OpAudit      Op = 9
	OpReload     Op = 10
	OpCheck      Op = 11
	OpDelegate   Op = 12
)

func (o Op) String() string {
	switch o {
	case OpWhoami:
		return "whoami"
	case OpPublish:
		return "publish"
	case OpRevoke:
		return "revoke"
	case OpAcquire:
		return "acquire"
	case OpList:
		return "list"
	case OpStatus:
		return "status"
	case OpRegister:
		return "register"
	case OpUnregister:
		return "unregister"
	case OpAudit:
		return "audit"
	case OpReload:
		return "reload"
	case OpCheck:
		return "check"
	case OpDelegate:
		return "delegate"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Attr is an attribute type.
type Attr uint16

const (
	AttrName      Attr = 1  // string: entry name
	AttrOwner     Attr = 2  // string: owner identity
	AttrFlags     Attr = 3  // u32: FlagPin, FlagReplace
	AttrTTL       Attr = 4  // u64: time to live in milliseconds
	AttrAllow     Attr = 5  // string, repeatable: audience pattern
	AttrMessage   Attr = 6  // string: human-readable error detail
	AttrIdentity  Attr = 7  // string: identity of the caller
	AttrEntry     Attr = 8  // nested attributes: one store entry
	AttrKind      Attr = 9  // string: fd kind
	AttrExpires   Attr = 10 // u64: expiry, Unix time in milliseconds
	AttrAcquired  Attr = 11 // u64: times acquired
	AttrAfter     Attr = 12 // string: list cursor, "OWNER:NAME" of the last entry seen
	AttrMore      Attr = 13 // empty: more entries follow the last one
	AttrUID       Attr = 14 // u32
	AttrPID       Attr = 15 // u32
	AttrCgroup    Attr = 16 // string: cgroup v2 path
	AttrPublished Attr = 17 // u64: publication time, Unix milliseconds
	// Status (OpStatus).
	AttrNode          Attr = 18 // nested attributes: one cgroup node
	AttrEntries       Attr = 19 // u64: entries held (by the agent, or charged to a node)
	AttrPinned        Attr = 20 // u64: pinned entries charged to a node
	AttrMaxEntries    Attr = 21 // u64: entries limit; absent: unlimited
	AttrMaxPinned     Attr = 22 // u64: pins limit; absent: unlimited
	AttrEntriesSource Attr = 23 // string: where AttrMaxEntries comes from
	AttrPinnedSource  Attr = 24 // string: where AttrMaxPinned comes from
	AttrOpenFDs       Attr = 25 // u64: fds the agent has open
	AttrFDLimit       Attr = 26 // u64: the agent's RLIMIT_NOFILE
	AttrOwners        Attr = 27 // u64: entries whose owner cgroup is the node
	AttrWatched       Attr = 28 // u64: owner cgroups watched for emptying
	// Containers (OpRegister, OpUnregister).
	AttrContainerID   Attr = 29 // string: the runtime's container id
	AttrContainerName Attr = 30 // string: the container's name
	AttrRef           Attr = 31 // string, repeatable: "OWNER:NAME" the container wants
	AttrResult        Attr = 32 // nested: OWNER, NAME, CODE, MESSAGE for one requested entry
	AttrCode          Attr = 33 // u32: a result code
	AttrContainers    Attr = 34 // u64: registered containers (status)
	AttrFile          Attr = 35 // string, repeatable: a configuration file read (reload)
	AttrGrants        Attr = 36 // u64: grants in the configuration (reload)
	AttrQuotas        Attr = 37 // u64: quotas in the configuration (reload)
	AttrWait          Attr = 38 // u64: acquire: wait up to this many milliseconds for the entry to be published
	AttrPod           Attr = 39 // string: register: "NAMESPACE/POD" of a Kubernetes pod's container
	// Grants (publish, acquire, check, revoke, delegate, list).
	AttrRestrict    Attr = 40 // u32: Restrict bits: publish, delegate; in replies, what a grant's description carries
	AttrGrant       Attr = 41 // string: a grant's id "gN": revoke one grant; in replies, the grant handed out or found
	AttrGrantee     Attr = 42 // string: the identity a grant was made for (replies); delegate: the identity to delegate to
	AttrParent      Attr = 43 // string: the id of the grant a delegated grant was derived from; absent for a grant of the entry itself
	AttrGrantInfo   Attr = 44 // nested: one grant of a list entry: GRANT, GRANTEE, UID, PARENT, RESTRICT, ACQUIRED, PUBLISHED, EXPIRES
	AttrEnforcement Attr = 45 // string: what a revoke of the entry does: "enforced", "advisory"
	AttrDepth       Attr = 46 // u32: a grant's depth: 1 for a grant of the entry, 2 for one delegated from it, ...
	AttrEnforcedBy  Attr = 47 // string (status): what enforces revokes ("bpf-lsm: HOOKS"), or why nothing does
	AttrInForce     Attr = 48 // u64 (status): kernel keys of enforced revocations in force
	AttrLost        Attr = 49 // u64 (status): enforced revocations found lifted at start
)

// Restrict is what a per-consumer grant's description withholds, as bits
// of AttrRestrict. A grant never holds more than its parent: a child's
// bits include its parent's.
type Restrict uint32

const (
	// RestrictOwn: each consumer gets its own open file description
	// (memfds and regular files reopened, directories as detached
	// mounts), so the publisher can tell consumers apart and revoke one.
	RestrictOwn Restrict = 1 << iota
	// RestrictReadOnly: the description is read-only (a memfd must be
	// sealed against writes, F_SEAL_WRITE or F_SEAL_FUTURE_WRITE, so that
	// a reopen through /proc cannot make it writable); a directory's
	// detached mount is read-only.
	RestrictReadOnly
	// RestrictNoSuid, RestrictNoDev, RestrictNoExec: a directory's
	// detached mount is nosuid, nodev, noexec.
	RestrictNoSuid
	RestrictNoDev
	RestrictNoExec
	// RestrictKeep (publish only): the publisher's own processes (its
	// cgroup) keep using the file after a kernel-enforced revoke.
	RestrictKeep
	// RestrictRevoked (replies, stored records only): the grant was
	// revoked; it stays as a marker that refuses its consumer the entry
	// until the entry is published anew.
	RestrictRevoked
)

// RestrictAll is every Restrict bit.
const RestrictAll = RestrictOwn | RestrictReadOnly | RestrictNoSuid | RestrictNoDev | RestrictNoExec | RestrictKeep

var restrictNames = []struct {
	bit  Restrict
	name string
}{{RestrictOwn, "per-consumer"}, {RestrictReadOnly, "read-only"}, {RestrictNoSuid, "nosuid"}, {RestrictNoDev, "nodev"}, {RestrictNoExec, "noexec"}, {RestrictKeep, "keep-publisher"}, {RestrictRevoked, "revoked"}}

// String lists r's names, comma-separated ("per-consumer,read-only"), ""
// for none.
func (r Restrict) String() string {
	var out []string
	for _, n := range restrictNames {
		if r&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ",")
}

// Names lists r's names.
func (r Restrict) Names() []string {
	out := []string{}
	for _, n := range restrictNames {
		if r&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// ParseRestrict reads one restriction's name (of those a request may
// carry: not "revoked").
func ParseRestrict(name string) (Restrict, error) {
	for _, n := range restrictNames {
		if n.name == name && n.bit&RestrictAll != 0 {
			return n.bit, nil
		}
	}
	var all []string
	for _, n := range restrictNames {
		if n.bit&RestrictAll != 0 {
			all = append(all, n.name)
		}
	}
	return 0, fmt.Errorf("unknown restriction %q (want %s)", name, strings.Join(all, ", "))
}

// Grant ids: "g" and a number unique for the store's whole life.
const GrantPrefix = "g"

// GrantSep separates an entry's name from the ids of the grants derived
// from it in the names the agent stores grants under ("NAME#g7#g9": g9 was
// delegated from g7, a grant of NAME). It is not a name character, so no
// request can name a grant as an entry.
const GrantSep = '#'

// ValidGrantID reports why id is not a grant id "gN".
func ValidGrantID(id string) error {
	n, ok := strings.CutPrefix(id, GrantPrefix)
	if !ok || n == "" || n[0] == '0' || len(n) > 20 {
		return fmt.Errorf("%q is not a grant id (g and a number, e.g. g7)", id)
	}
	for i := 0; i < len(n); i++ {
		if n[i] < '0' || n[i] > '9' {
			return fmt.Errorf("%q is not a grant id (g and a number, e.g. g7)", id)
		}
	}
	return nil
}

// MaxWait bounds one acquire's wait; a client that wants longer asks again.
const MaxWait = 30_000 // milliseconds

// Publish flags (AttrFlags).
const (
	FlagPin     uint32 = 1 << 0
	FlagReplace uint32 = 1 << 1
	// FlagRequired (REGISTER): refuse the registration if any requested
	// entry could not be acquired.
	FlagRequired uint32 = 1 << 2
	// FlagShutdown (REVOKE): shut a socket entry down before dropping it,
	// so that every copy handed out stops working.
	FlagShutdown uint32 = 1 << 3
	// FlagCheck (REGISTER): register nothing, carry no fd; only answer
	// whether the container the request describes could acquire each
	// requested entry (an NRI plugin asks at CreateContainer, before the
	// container has a process).
	FlagCheck uint32 = 1 << 4
	// FlagRunning (REGISTER): the container already runs (an NRI plugin
	// registering again after a restart): its cgroup may hold processes
	// besides the one the pidfd names.
	FlagRunning uint32 = 1 << 5
)

// Code is a stable error code. Zero means success.
type Code uint16

const (
	CodeOK                 Code = 0
	CodeInvalidRequest     Code = 1
	CodeUnsupportedVersion Code = 2
	CodePermissionDenied   Code = 3
	CodeNotFound           Code = 4
	CodeExists             Code = 5
	CodeQuotaExceeded      Code = 6
	CodeBusy               Code = 7
	CodeInternal           Code = 8
	CodeInvalidConfig      Code = 9
	// CodeNotOurs (check): the fd is none of the entry's descriptions.
	CodeNotOurs Code = 10
)

var codeNames = [...]string{
	CodeOK:                 "ok",
	CodeInvalidRequest:     "invalid-request",
	CodeUnsupportedVersion: "unsupported-version",
	CodePermissionDenied:   "permission-denied",
	CodeNotFound:           "not-found",
	CodeExists:             "exists",
	CodeQuotaExceeded:      "quota-exceeded",
	CodeBusy:               "busy",
	CodeInternal:           "internal",
	CodeInvalidConfig:      "invalid-config",
	CodeNotOurs:            "not-ours",
}

// String returns the code's stable name, e.g. "not-found".
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("error-%d", uint16(c))
}

// Error is an error reported by the agent. errors.Is matches two Errors with
// the same Code, so the sentinels below match any message.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code.String()
	}
	return e.Code.String() + ": " + e.Message
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels for errors.Is.
var (
	ErrInvalidRequest     = &Error{Code: CodeInvalidRequest}
	ErrUnsupportedVersion = &Error{Code: CodeUnsupportedVersion}
	ErrPermissionDenied   = &Error{Code: CodePermissionDenied}
	ErrNotFound           = &Error{Code: CodeNotFound}
	ErrExists             = &Error{Code: CodeExists}
	ErrQuotaExceeded      = &Error{Code: CodeQuotaExceeded}
	ErrBusy               = &Error{Code: CodeBusy}
	ErrInternal           = &Error{Code: CodeInternal}
	ErrInvalidConfig      = &Error{Code: CodeInvalidConfig}
	ErrNotOurs            = &Error{Code: CodeNotOurs}
)

// ErrMalformed reports bytes that are not a well-formed message.
var ErrMalformed = errors.New("malformed message")

// Header is the fixed start of every message.
type Header struct {
	Version uint8
	Op      Op
	Code    Code
}

// Builder appends a message to a byte slice. The zero value is not usable;
// start with NewMessage.
type Builder struct {
	b []byte
}

// NewMessage starts a message with the given op and code in buf[:0].
func NewMessage(buf []byte, op Op, code Code) Builder {
	b := append(buf[:0], Version, byte(op), 0, 0, 0, 0, 0, 0)
	binary.LittleEndian.PutUint16(b[2:], uint16(code))
	return Builder{b: b}
}

// Bytes returns the encoded message.
func (m *Builder) Bytes() []byte { return m.b }

// Len returns the encoded length so far.
func (m *Builder) Len() int { return len(m.b) }

// Truncate cuts the message back to n bytes (a length from Len).
func (m *Builder) Truncate(n int) { m.b = m.b[:n] }

func (m *Builder) attr(t Attr, n int) {
	m.b = binary.LittleEndian.AppendUint16(m.b, uint16(t))
	m.b = binary.LittleEndian.AppendUint16(m.b, uint16(n))
}

// String appends a string attribute. Values over 65535 bytes are cut.
func (m *Builder) String(t Attr, s string) {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	m.attr(t, len(s))
	m.b = append(m.b, s...)
}

// Empty appends a flag attribute without a value.
func (m *Builder) Empty(t Attr) { m.attr(t, 0) }

// U32 appends a 32-bit attribute.
func (m *Builder) U32(t Attr, v uint32) {
	m.attr(t, 4)
	m.b = binary.LittleEndian.AppendUint32(m.b, v)
}

// U64 appends a 64-bit attribute.
func (m *Builder) U64(t Attr, v uint64) {
	m.attr(t, 8)
	m.b = binary.LittleEndian.AppendUint64(m.b, v)
}

// Begin starts a nested attribute; End closes it.
func (m *Builder) Begin(t Attr) int {
	m.attr(t, 0)
	return len(m.b)
}

// End fixes the length of the nested attribute started at start.
func (m *Builder) End(start int) {
	binary.LittleEndian.PutUint16(m.b[start-2:], uint16(len(m.b)-start))
}

// ParseHeader checks the header of msg and returns it with the attribute
// bytes that follow. A header with another version is returned together
// with an ErrUnsupportedVersion error so that the caller can answer it.
func ParseHeader(msg []byte) (Header, []byte, error) {
	if len(msg) < HeaderSize {
		return Header{}, nil, fmt.Errorf("%w: %d bytes, shorter than the header", ErrMalformed, len(msg))
	}
	h := Header{Version: msg[0], Op: Op(msg[1]), Code: Code(binary.LittleEndian.Uint16(msg[2:]))}
	if h.Version != Version {
		return h, nil, Errorf(CodeUnsupportedVersion, "version %d, this agent speaks %d", h.Version, Version)
	}
	if binary.LittleEndian.Uint32(msg[4:]) != 0 {
		return h, nil, fmt.Errorf("%w: reserved header bytes are not zero", ErrMalformed)
	}
	return h, msg[HeaderSize:], nil
}

// Iter walks attributes. Call Next until it returns false, then check Err.
type Iter struct {
	b   []byte
	err error
}

// Attrs returns an iterator over b.
func Attrs(b []byte) Iter { return Iter{b: b} }

// Next returns the next attribute.
func (it *Iter) Next() (Attr, []byte, bool) {
	if len(it.b) == 0 || it.err != nil {
		return 0, nil, false
	}
	if len(it.b) < 4 {
		it.err = fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(it.b))
		return 0, nil, false
	}
	t := Attr(binary.LittleEndian.Uint16(it.b))
	n := int(binary.LittleEndian.Uint16(it.b[2:]))
	if len(it.b) < 4+n {
		it.err = fmt.Errorf("%w: attribute %d claims %d bytes, %d left", ErrMalformed, t, n, len(it.b)-4)
		return 0, nil, false
	}
	v := it.b[4 : 4+n]
	it.b = it.b[4+n:]
	return t, v, true
}

// Err returns the first decoding error.
func (it *Iter) Err() error { return it.err }

// U32 decodes a 32-bit attribute value.
func U32(v []byte) (uint32, error) {
	if len(v) != 4 {
		return 0, fmt.Errorf("%w: u32 attribute of %d bytes", ErrMalformed, len(v))
	}
	return binary.LittleEndian.Uint32(v), nil
}

// U64 decodes a 64-bit attribute value.
func U64(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: u64 attribute of %d bytes", ErrMalformed, len(v))
	}
	return binary.LittleEndian.Uint64(v), nil
}

// ValidName reports why name cannot be an entry name, or nil. Names are 1 to
// 255 characters from [A-Za-z0-9._@+=-]; so they never contain ':' (the
// separator in OWNER:NAME and in LISTEN_FDNAMES) nor glob characters.
func ValidName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > MaxName {
		return fmt.Errorf("name is %d bytes, longer than %d", len(name), MaxName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == '-' || c == '@' || c == '+' || c == '=':
		default:
			return fmt.Errorf("name %q contains %q: names use only letters, digits and . _ - @ + =", name, c)
		}
	}
	return nil
}

// SplitRef splits "OWNER:NAME" at the last ':' and validates both halves.
func SplitRef(ref string) (owner, name string, err error) {
	i := strings.LastIndexByte(ref, ':')
	if i <= 0 {
		return "", "", fmt.Errorf("%q is not OWNER:NAME (e.g. rpm-ostreed.service:zincati-fd)", ref)
	}
	owner, name = ref[:i], ref[i+1:]
	if err := ValidName(name); err != nil {
		return "", "", fmt.Errorf("%q: %w", ref, err)
	}
	if len(owner) > MaxIdentity {
		return "", "", fmt.Errorf("%q: owner longer than %d bytes", ref, MaxIdentity)
	}
	return owner, name, nil
}

// ValidPod checks a pod reference "NAMESPACE/POD": a namespace (a DNS
// label, at most 63 bytes) and a pod name (at most 253), each of the
// characters of a container name.
func ValidPod(s string) error {
	ns, pod, ok := strings.Cut(s, "/")
	if !ok {
		return fmt.Errorf("pod %q: want NAMESPACE/POD", s)
	}
	if err := validKubeName(ns, 63); err != nil {
		return fmt.Errorf("pod %q: namespace: %w", s, err)
	}
	if err := validKubeName(pod, 253); err != nil {
		return fmt.Errorf("pod %q: %w", s, err)
	}
	return nil
}

// validKubeName checks a Kubernetes object name of at most max bytes.
func validKubeName(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("name %q: longer than %d bytes", s, max)
	}
	if len(s) > 128 {
		s = s[:128] // the alphabet is the container name's; its length bound is not
	}
	return ValidContainerName(s)
}

// ValidContainerName checks a container id or name: 1 to 128 letters,
// digits and "_.-", not starting with a dot or dash (what runc and podman
// accept, minus what would be ambiguous in identities and patterns).
func ValidContainerName(s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("container name %q: want 1 to 128 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		case (c == '.' || c == '-') && i > 0:
		default:
			return fmt.Errorf("container name %q: only letters, digits and _.- (not first) are allowed", s)
		}
	}
	return nil
}
