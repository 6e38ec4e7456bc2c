package procfs

import (
	"bytes"
	"strconv"

	"golang.org/x/sys/unix"
)

// Mount is one line of /proc/PID/mountinfo (proc_pid_mountinfo(5)).
type Mount struct {
	ID int
	// Dev is the superblock's device (MAJOR:MINOR, as unix.Mkdev encodes
	// it): st_dev of the mount's files on most file systems, though not on
	// btrfs subvolumes or overlayfs over several file systems, whose stat
	// reports a device of their own.
	Dev uint64
	// Point is the mount point, with the kernel's octal escapes (\040).
	Point string
	// Options are the per-mount options, Super the superblock's.
	Options, FSType, Super string
}

// ParseMountinfo parses the lines of a mountinfo file; malformed lines are
// left out.
func ParseMountinfo(b []byte) []Mount {
	var out []Mount
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if m, ok := parseMount(line); ok {
			out = append(out, m)
		}
	}
	return out
}

// parseMount parses "ID PARENT MAJ:MIN ROOT POINT OPTS [TAG...] - FSTYPE
// SOURCE SUPER".
func parseMount(line []byte) (Mount, bool) {
	pre, post, ok := bytes.Cut(line, []byte(" - "))
	if !ok {
		return Mount{}, false
	}
	f := bytes.Fields(pre)
	g := bytes.Fields(post)
	if len(f) < 6 || len(g) < 3 {
		return Mount{}, false
	}
	id, err := strconv.Atoi(string(f[0]))
	if err != nil {
		return Mount{}, false
	}
	maj, min, ok := bytes.Cut(f[2], []byte{':'})
	if !ok {
		return Mount{}, false
	}
	ma, err1 := strconv.ParseUint(string(maj), 10, 32)
	mi, err2 := strconv.ParseUint(string(min), 10, 32)
	if err1 != nil || err2 != nil {
		return Mount{}, false
	}
	return Mount{
		ID:      id,
		Dev:     unix.Mkdev(uint32(ma), uint32(mi)),
		Point:   string(f[4]),
		Options: string(f[5]),
		FSType:  string(g[0]),
		Super:   string(g[2]),
	}, true
}
