package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/capd-dev/capd/internal/proto"
)

// Caller is what the kernel says about a connected process: everything an
// authorization decision may rest on. Nothing in it comes from a request.
type Caller struct {
	// Identity is the name the caller owns entries under: "NAME.service",
	// "NAME.scope", "container:NAME", "cgroup:/path"; Aliases are further
	// names policy matches it by (a named container's "container:ID").
	Identity string
	Aliases  []string
	// UID is the caller's effective uid when it connected (SO_PEERCRED).
	UID uint32
	// Container is the id of the registered container whose cgroup holds
	// the caller, "" if none.
	Container string
	// CapSysAdmin and CapSysPtrace are read from the caller's effective
	// capability set; they count only with HostNamespaces.
	CapSysAdmin, CapSysPtrace bool
	// HostNamespaces is true only when the kernel showed the caller to be
	// in the agent's own user and pid namespaces. Unknown is false.
	HostNamespaces bool
	// Why says, when HostNamespaces is false, what the agent saw instead
	// ("in a user namespace of its own", "cannot read its namespaces: ...").
	Why string
}

// Names returns every name policy may know the caller by, its identity
// first.
func (c *Caller) Names() []string {
	if len(c.Aliases) == 0 {
		return []string{c.Identity}
	}
	return append([]string{c.Identity}, c.Aliases...)
}

// HostAdmin reports whether the caller is a host administrator: uid 0
// holding CAP_SYS_ADMIN in the agent's user and pid namespaces, outside
// every registered container. Each fact is positive and kernel-given; a
// fact the agent could not establish counts as absent.
func (c *Caller) HostAdmin() bool {
	return c.UID == 0 && c.CapSysAdmin && c.HostNamespaces && c.Container == ""
}

// InContainer reports whether the caller runs in a registered container or
// anywhere else than the agent's own namespaces (an unregistered
// container, a user namespace): a consumer whose view of the file system
// is not the host's.
func (c *Caller) InContainer() bool { return c.Container != "" || !c.HostNamespaces }

// notAdmin says why the caller is not a host administrator.
func (c *Caller) notAdmin() string {
	switch {
	case c.Container != "":
		return "it runs in container " + c.Container
	case !c.HostNamespaces && c.Why != "":
		return c.Why
	case !c.HostNamespaces:
		return "it is not in the agent's user and pid namespaces"
	case c.UID != 0:
		return fmt.Sprintf("it runs as uid %d", c.UID)
	case !c.CapSysAdmin:
		return "it lacks CAP_SYS_ADMIN"
	}
	return ""
}

// Action is what a caller asks to do.
type Action uint8

const (
	// Publish stores an fd under the caller's own identity; no target.
	Publish Action = iota
	// Acquire receives a copy of the target entry's fd.
	Acquire
	// See shows the target entry in list.
	See
	// Replace publishes over the target entry (the caller's own name).
	Replace
	// Revoke removes the target entry, the caller's own or another owner's.
	Revoke
	// Status shows every cgroup's usage; no target.
	Status
	// Audit reads every process's fds; no target.
	Audit
	// ManageContainers registers and unregisters containers; no target.
	ManageContainers
	// Reload re-reads the configuration; no target.
	Reload
	// Check asks which of the target entry's descriptions (the entry's
	// own, or a grant's) an fd is.
	Check
	// Delegate derives a grant of the target entry, from the caller's
	// own, for the identity Target.To.
	Delegate
)

// NumActions is the number of actions: every Action is below it.
const NumActions = int(Delegate) + 1

var actionNames = [...]string{Publish: "publish", Acquire: "acquire", See: "list", Replace: "replace", Revoke: "revoke", Status: "status", Audit: "audit", ManageContainers: "register containers", Reload: "reload", Check: "check", Delegate: "delegate"}

// actionKeys are the actions' stable names, for metrics labels.
var actionKeys = [...]string{Publish: "publish", Acquire: "acquire", See: "see", Replace: "replace", Revoke: "revoke", Status: "status", Audit: "audit", ManageContainers: "manage-containers", Reload: "reload", Check: "check", Delegate: "delegate"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("action %d", a)
}

// Key is the action's short stable name ("acquire", "manage-containers"),
// for metrics labels; String is for messages.
func (a Action) Key() string {
	if int(a) < len(actionKeys) {
		return actionKeys[a]
	}
	return "unknown"
}

// Denials lists the classes Authorize may refuse a with, in order.
func (a Action) Denials() []Class {
	switch a {
	case Acquire:
		return []Class{NotGranted, OwnerUID, Audience, UnconfinedKind}
	case See:
		return []Class{NotVisible}
	case Replace, Revoke, Check:
		return []Class{NotOwner, OwnerUID}
	case Delegate:
		return []Class{NotGranted, Audience}
	case Status, ManageContainers, Reload:
		return []Class{HostAdmin}
	case Audit:
		return []Class{HostAdmin, CapSysPtrace}
	}
	return nil
}

// Class is the stable class of a refusal: what the caller lacked. Its Key
// is short and stable across releases (metrics label it, docs/METRICS.md
// lists them), while a Decision's Reason is free text for people.
type Class uint8

// The classes of refusal.
const (
	// Allowed is the class of every Decision that allows.
	Allowed Class = iota
	// NotGranted: no [[grant]] lets the consumer acquire the entry.
	NotGranted
	// OwnerUID: the caller has the owner's identity but not the uid that
	// published the entry (and is no host administrator).
	OwnerUID
	// Audience: the owner's allow list excludes the consumer.
	Audience
	// UnconfinedKind: a "dir" or "path" fd for a consumer in a container,
	// and no grant for it sets allow_kinds.
	UnconfinedKind
	// NotOwner: another owner's entry, and the caller is no host
	// administrator.
	NotOwner
	// NotVisible: list does not show the entry to the caller.
	NotVisible
	// HostAdmin: the action needs a host administrator.
	HostAdmin
	// CapSysPtrace: audit needs CAP_SYS_PTRACE as well.
	CapSysPtrace
	// UnknownAction: an action Authorize does not know.
	UnknownAction
)

// NumClasses is the number of classes: every Class is below it.
const NumClasses = int(UnknownAction) + 1

var classKeys = [...]string{Allowed: "allowed", NotGranted: "not-granted", OwnerUID: "owner-uid", Audience: "audience",
	UnconfinedKind: "unconfined-kind", NotOwner: "not-owner", NotVisible: "not-visible", HostAdmin: "host-admin",
	CapSysPtrace: "cap-sys-ptrace", UnknownAction: "unknown-action"}

// Key is the class's short stable name ("not-granted").
func (c Class) Key() string {
	if int(c) < len(classKeys) {
		return classKeys[c]
	}
	return "unknown"
}

// Target is the entry an action concerns.
type Target struct {
	Owner, Name string
	// UID published the entry.
	UID uint32
	// Allow is the owner's audience (empty: whoever policy grants).
	Allow []Pattern
	// Kind is the fd's kind (see linux.FdKind): "dir" and "path" are not
	// confined to a container's root.
	Kind string
	// Restrict is what each consumer's grant of the entry withholds
	// (RestrictOwn: consumers get grants of their own).
	Restrict proto.Restrict
	// Delegators (revoking one grant) are the grantees of the grants it
	// was delegated from: each may revoke it.
	Delegators []Grantee
	// To (delegating) is the identity a grant is delegated to.
	To string
}

// AnyUID is a Grantee's uid when the grant is for every uid of its
// identity (a delegated grant).
const AnyUID = ^uint32(0)

// Grantee is an identity with its uid, whom a grant was made for.
type Grantee struct {
	Identity string
	UID      uint32
}

// Decision is an answer with its reason, for the client and the log, and,
// for a refusal, its stable class, for counting.
type Decision struct {
	Allowed bool
	Reason  string
	Class   Class // Allowed (zero) when Allowed is true
	// Restrict (acquire) is what the consumer's grant must withhold:
	// the entry's and every matching policy grant's restrictions. Zero:
	// the consumer gets the entry's own description.
	Restrict proto.Restrict
}

func allow(format string, args ...any) Decision {
	return Decision{Allowed: true, Reason: fmt.Sprintf(format, args...)}
}

func deny(class Class, format string, args ...any) Decision {
	return Decision{Reason: fmt.Sprintf(format, args...), Class: class}
}

// unconfinedKinds are kinds of fd that reach outside a container's root:
// a directory fd walks up with "..", an O_PATH fd reopens or walks the
// same. A grant must name them in allow_kinds to deliver them to a
// consumer in a container.
var unconfinedKinds = []string{"dir", "path"}

// Authorize is the one decision on who may do what: every request of
// every client goes through it. It reads nothing but its arguments and the
// immutable Config.
func (c *Config) Authorize(who *Caller, act Action, t *Target) Decision {
	switch act {
	case Publish:
		// Anyone may publish under its own identity; quotas and per-uid
		// limits bound how much.
		return allow("own identity")
	case Status, ManageContainers, Reload:
		return c.admin(who, act)
	case Audit:
		if d := c.admin(who, act); !d.Allowed {
			return d
		}
		if !who.CapSysPtrace {
			return deny(CapSysPtrace, "audit reads every process's fds: a host administrator with CAP_SYS_PTRACE only (the caller lacks CAP_SYS_PTRACE)")
		}
		return allow("host administrator")
	case Revoke, Replace, Check:
		if act == Revoke && t.Owner != who.Identity {
			for _, d := range t.Delegators {
				if d.Identity == who.Identity && (d.UID == who.UID || d.UID == AnyUID) {
					return allow("delegated it")
				}
			}
		}
		if t.Owner != who.Identity {
			if who.HostAdmin() {
				return allow("host administrator")
			}
			return deny(NotOwner, "%s may not %s %s:%s: only a host administrator may act on another owner's entries (%s)", who.Identity, act, t.Owner, t.Name, who.notAdmin())
		}
		if who.UID == t.UID {
			return allow("the publishing uid")
		}
		if who.HostAdmin() {
			return allow("host administrator")
		}
		return deny(OwnerUID, "%s:%s was published by uid %d; only that uid or a host administrator may %s it", t.Owner, t.Name, t.UID, act)
	case See:
		if who.HostAdmin() || t.Owner == who.Identity {
			return allow("visible")
		}
		if _, _, ok := c.grants(who, t); ok && admits(t.Allow, who.Names()) {
			return allow("granted")
		}
		return deny(NotVisible, "not visible")
	case Acquire:
		return c.acquire(who, t)
	case Delegate:
		return c.delegate(who, t)
	}
	return deny(UnknownAction, "unknown action %d", act)
}

func (c *Config) admin(who *Caller, act Action) Decision {
	if who.HostAdmin() {
		return allow("host administrator")
	}
	return deny(HostAdmin, "%s needs a host administrator (uid 0 with CAP_SYS_ADMIN in the agent's user and pid namespaces, outside containers): %s", act, who.notAdmin())
}

func (c *Config) acquire(who *Caller, t *Target) Decision {
	var d Decision
	var kinds []string
	if t.Owner == who.Identity && (who.UID == t.UID || who.HostAdmin()) {
		// An owner's own entries, for restart recovery: neither policy nor
		// the audience applies, and it gets the entry's own description.
		d = allow("own entry")
	} else {
		var ok bool
		var r proto.Restrict
		if kinds, r, ok = c.grants(who, t); !ok {
			why, class := "no grant in policy", NotGranted
			if t.Owner == who.Identity {
				why = fmt.Sprintf("no grant in policy (it was published by uid %d, not the caller's uid %d)", t.UID, who.UID)
				class = OwnerUID
			}
			return deny(class, "%s may not acquire %s:%s: %s", who.Identity, t.Owner, t.Name, why)
		}
		if !admits(t.Allow, who.Names()) {
			return deny(Audience, "%s may not acquire %s:%s: the owner's allow list excludes it", who.Identity, t.Owner, t.Name)
		}
		d = allow("granted")
		if d.Restrict = r | t.Restrict; d.Restrict != 0 {
			d.Restrict |= proto.RestrictOwn
		}
	}
	// A directory as a detached mount of its own is confined: ".." does
	// not leave it.
	confined := t.Kind == "dir" && d.Restrict&proto.RestrictOwn != 0
	if who.InContainer() && slices.Contains(unconfinedKinds, t.Kind) && !confined && !slices.Contains(kinds, t.Kind) {
		return deny(UnconfinedKind, "%s may not acquire %s:%s: a %s fd reaches outside a container's root, and no grant for it sets allow_kinds = [%q]", who.Identity, t.Owner, t.Name, t.Kind, t.Kind)
	}
	return d
}

// delegate decides whether who may derive a grant of t, from its own, for
// t.To: a policy grant lets who acquire t and names t.To in delegate_to,
// and the owner's audience admits t.To. That who holds a grant to
// delegate from is the store's to check.
func (c *Config) delegate(who *Caller, t *Target) Decision {
	names := who.Names()
	for i := range c.Grants {
		g := &c.Grants[i]
		if !slices.ContainsFunc(names, g.Consumer.Match) || !slices.ContainsFunc(g.DelegateTo, func(p Pattern) bool { return p.Match(t.To) }) {
			continue
		}
		if slices.ContainsFunc(g.Acquire, func(r EntryRef) bool { return r.Match(t.Owner, t.Name) }) {
			if !admits(t.Allow, []string{t.To}) {
				return deny(Audience, "%s may not delegate %s:%s to %s: the owner's allow list excludes %s", who.Identity, t.Owner, t.Name, t.To, t.To)
			}
			return allow("delegate_to of a grant")
		}
	}
	return deny(NotGranted, "%s may not delegate %s:%s to %s: no grant in policy for it names %s in delegate_to", who.Identity, t.Owner, t.Name, t.To, t.To)
}

// grants reports whether a grant lets any of who's names acquire t, the
// allow_kinds of every such grant, and what they restrict together.
func (c *Config) grants(who *Caller, t *Target) (kinds []string, r proto.Restrict, ok bool) {
	names := who.Names()
	for i := range c.Grants {
		g := &c.Grants[i]
		if !slices.ContainsFunc(names, g.Consumer.Match) {
			continue
		}
		for _, ref := range g.Acquire {
			if ref.Match(t.Owner, t.Name) {
				ok = true
				kinds = append(kinds, g.AllowKinds...)
				r |= g.Restriction()
				break
			}
		}
	}
	return kinds, r, ok
}

// admits reports whether an audience lets a consumer known by names in.
func admits(allow []Pattern, names []string) bool {
	if len(allow) == 0 {
		return true
	}
	for _, p := range allow {
		if slices.ContainsFunc(names, p.Match) {
			return true
		}
	}
	return false
}

// Kinds lists the values allow_kinds accepts.
func Kinds() string { return strings.Join(unconfinedKinds, ", ") }
