package cgroup

import (
	"path"
	"strings"
)

// IdentityFromPath maps a cgroup v2 path (as in the "0::" line of
// /proc/PID/cgroup) to a capd identity:
//
//   - the systemd unit that owns the cgroup, "NAME.service" or "NAME.scope":
//     the first path component after the leading slices, whatever lies below
//     it (a delegated subtree belongs to its unit, so a delegate cannot mint
//     another unit's identity by naming a sub-cgroup after it);
//   - otherwise "cgroup:" followed by the cleaned path.
//
// Examples: /system.slice/rpm-ostreed.service -> rpm-ostreed.service;
// /user.slice/user-1000.slice/session-2.scope -> session-2.scope;
// /user.slice/user-1000.slice/user@1000.service/app.slice/x.service ->
// user@1000.service; /machine/ctr1 -> cgroup:/machine/ctr1; / -> cgroup:/.
func IdentityFromPath(p string) string {
	id, _ := Owner(p)
	return id
}

// Owner returns the identity of cgroup v2 path p (see IdentityFromPath) and
// the owner cgroup: the cgroup whose life is the identity's life. For a
// unit it is the unit's cgroup (the path up to and including the unit
// component), so processes in the unit's sub-cgroups count; for a
// "cgroup:" identity it is p itself. Both are cleaned paths.
func Owner(p string) (identity, owner string) {
	p = path.Clean("/" + p)
	rest := strings.TrimPrefix(p, "/")
	for rest != "" {
		comp, tail, _ := strings.Cut(rest, "/")
		if strings.HasSuffix(comp, ".slice") && ValidUnitName(comp) {
			rest = tail
			continue
		}
		if (strings.HasSuffix(comp, ".service") || strings.HasSuffix(comp, ".scope")) && ValidUnitName(comp) {
			end := len(p) - len(rest) + len(comp)
			return comp, p[:end]
		}
		break
	}
	return "cgroup:" + p, p
}

// Parent returns the parent of cleaned cgroup path p, and false for "/".
func Parent(p string) (string, bool) {
	if p == "/" {
		return "", false
	}
	return path.Dir(p), true
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
