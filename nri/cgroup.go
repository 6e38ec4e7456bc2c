package nri

import (
	"fmt"
	"path"
	"strings"
)

// cgroupPath turns the cgroups path a runtime reports for a container into
// the cgroup v2 path the kernel shows for its processes: a path as it is
// (the cgroupfs driver), or systemd's "SLICE:PREFIX:NAME" (the systemd
// driver) as systemd lays it out, the slice nested by its dashes and the
// container in PREFIX-NAME.scope.
func cgroupPath(p string) (string, error) {
	if strings.HasPrefix(p, "/") {
		return path.Clean(p), nil
	}
	parts := strings.Split(p, ":")
	if len(parts) != 3 || parts[2] == "" {
		return "", fmt.Errorf("cgroups path %q is neither a path nor SLICE:PREFIX:NAME", p)
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice"
	}
	dir, err := expandSlice(slice)
	if err != nil {
		return "", err
	}
	unit := name + ".scope"
	if prefix != "" {
		unit = prefix + "-" + unit
	}
	return path.Join(dir, unit), nil
}

// expandSlice is where systemd puts slice s: "a-b-c.slice" is
// /a.slice/a-b.slice/a-b-c.slice; "-.slice" is the root.
func expandSlice(s string) (string, error) {
	name, ok := strings.CutSuffix(s, ".slice")
	if ok && name == "-" {
		return "/", nil
	}
	if !ok || name == "" || strings.Contains(name, "/") || strings.HasPrefix(name, "-") || strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return "", fmt.Errorf("%q is not a slice name", s)
	}
	out, prefix := "", ""
	for _, part := range strings.Split(name, "-") {
		prefix += part
		out += "/" + prefix + ".slice"
		prefix += "-"
	}
	return out, nil
}
