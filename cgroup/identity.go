package cgroup

import (
	"path"
	"strings"
)

// IdentityFromPath maps a cgroup v2 path (as in the "0::" line of
// /proc/PID/cgroup) to a capd identity:
//
//   - the systemd unit that owns the cgroup, "NAME.service" or "NAME.scope",
//     only where the path is systemd-shaped: zero or more slices nested as
//     systemd nests them (see Owner), then the unit, then whatever lies
//     below it (a delegated subtree belongs to its unit, so a delegate
//     cannot mint another unit's identity by naming a sub-cgroup after it);
//   - otherwise "cgroup:" followed by the cleaned path.
//
// A unit name containing ':' never becomes an identity: systemd allows it,
// but capd's other identities are "KIND:..." (container:, pod:, machine:,
// cgroup:), which such a unit could otherwise impersonate.
//
// Examples: /system.slice/rpm-ostreed.service -> rpm-ostreed.service;
// /user.slice/user-1000.slice/session-2.scope -> session-2.scope;
// /user.slice/user-1000.slice/user@1000.service/app.slice/x.service ->
// user@1000.service; /system.slice/x.slice/y.service ->
// cgroup:/system.slice/x.slice/y.service (x.slice belongs under the root);
// /system.slice/container:web.service ->
// cgroup:/system.slice/container:web.service; /machine/ctr1 ->
// cgroup:/machine/ctr1; / -> cgroup:/.
func IdentityFromPath(p string) string {
	id, _ := Owner(p)
	return id
}

// Owner returns the identity of cgroup v2 path p (see IdentityFromPath) and
// the owner cgroup: the cgroup whose life is the identity's life. For a
// unit it is the unit's cgroup (the path up to and including the unit
// component), so processes in the unit's sub-cgroups count; for a
// "cgroup:" identity it is p itself. Both are cleaned paths.
//
// The path is systemd-shaped when every component above the unit is a
// slice in the place systemd puts it: "a-b-c.slice" directly below
// "a-b.slice", which is directly below "a.slice", which is directly below
// the root; a slice without '-' is directly below the root. The root slice
// "-.slice" is the root cgroup itself, never a component. Anything else
// (any process that can write cgroupfs can create such paths) gets a
// "cgroup:" identity.
func Owner(p string) (identity, owner string) {
	p = path.Clean("/" + p)
	rest := strings.TrimPrefix(p, "/")
	parent := "" // the enclosing slice; "" is the root
	for rest != "" {
		comp, tail, _ := strings.Cut(rest, "/")
		if strings.HasSuffix(comp, ".slice") {
			if !ValidUnitName(comp) || parentSlice(comp) != parent {
				break
			}
			parent = comp
			rest = tail
			continue
		}
		if (strings.HasSuffix(comp, ".service") || strings.HasSuffix(comp, ".scope")) &&
			ValidUnitName(comp) && !strings.Contains(comp, ":") {
			end := len(p) - len(rest) + len(comp)
			return comp, p[:end]
		}
		break
	}
	return "cgroup:" + p, p
}

// parentSlice returns the slice systemd nests slice s directly below: the
// name up to its last '-' plus ".slice", or "" (the root) for a name
// without '-'. It returns "-" (no slice has that parent) for names systemd
// rejects as slices: a leading or trailing '-', "--", '@', and "-.slice".
func parentSlice(s string) string {
	prefix := strings.TrimSuffix(s, ".slice")
	if prefix == "" || prefix[0] == '-' || prefix[len(prefix)-1] == '-' ||
		strings.Contains(prefix, "--") || strings.Contains(prefix, "@") {
		return "-"
	}
	i := strings.LastIndexByte(prefix, '-')
	if i < 0 {
		return ""
	}
	return prefix[:i] + ".slice"
}

// Parent returns the parent of cleaned cgroup path p, and false for "/".
func Parent(p string) (string, bool) {
	if p == "/" {
		return "", false
	}
	return path.Dir(p), true
}

// Within reports whether cgroup path c is p or below it.
func Within(c, p string) bool {
	return p == "/" || c == p || (strings.HasPrefix(c, p) && c[len(p)] == '/')
}

// ValidUnitName checks systemd's unit name alphabet and length: letters,
// digits and ":-_.\@", at most 255 bytes, and a non-empty prefix before the
// type suffix.
func ValidUnitName(s string) bool {
	if len(s) > 255 {
		return false
	}
	dot := strings.LastIndexByte(s, '.')
	if dot <= 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == ':' || c == '-' || c == '_' || c == '.' || c == '\\' || c == '@':
		default:
			return false
		}
	}
	// "@.service" and "foo@" templates without an instance cannot own processes.
	at := strings.IndexByte(s, '@')
	return at != 0 && at != dot-1
}
