package linux

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CloneTree returns a detached bind mount of path (open_tree with
// OPEN_TREE_CLONE), made read-only, nosuid and nodev when readOnly is set.
// The caller owns the fd; it can be attached in another mount namespace
// with MoveMountTo.
func CloneTree(path string, readOnly bool) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return -1, &os.PathError{Op: "open_tree", Path: path, Err: err}
	}
	if readOnly {
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			Close(fd)
			return -1, &os.PathError{Op: "mount_setattr", Path: path, Err: err}
		}
	}
	return fd, nil
}

// NewTmpfs returns a detached tmpfs mount (fsopen, fsmount) with the given
// mode and size, nosuid and nodev. The caller owns the fd.
func NewTmpfs(mode, size string) (int, error) {
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, os.NewSyscallError("fsopen tmpfs", err)
	}
	defer Close(fs)
	for _, kv := range [][2]string{{"mode", mode}, {"size", size}} {
		if err := unix.FsconfigSetString(fs, kv[0], kv[1]); err != nil {
			return -1, os.NewSyscallError("fsconfig "+kv[0], err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return -1, os.NewSyscallError("fsconfig create", err)
	}
	m, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return -1, os.NewSyscallError("fsmount", err)
	}
	return m, nil
}

// MoveMountTo attaches the detached mount tree onto the file or directory
// that the O_PATH fd target names.
func MoveMountTo(tree, target int) error {
	err := unix.MoveMount(tree, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	return os.NewSyscallError("move_mount", err)
}

// OpenInRoot opens name below the directory root as if root were "/":
// symlinks, including absolute ones, cannot lead outside it (openat2 with
// RESOLVE_IN_ROOT, no magic links). flags is O_PATH|O_DIRECTORY and the
// like; O_CLOEXEC is added.
func OpenInRoot(root int, name string, flags int) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Openat2(root, name, &how)
		return err
	})
	if err != nil {
		return -1, &os.PathError{Op: "openat2", Path: name, Err: err}
	}
	return fd, nil
}

// OpenBeneath opens name below the directory dir without ever leaving it:
// openat2 with RESOLVE_BENEATH (".." above dir and absolute paths fail
// with EXDEV), RESOLVE_NO_SYMLINKS (ELOOP) and RESOLVE_NO_XDEV (no mount
// crossings, EXDEV). flags is O_PATH|O_DIRECTORY and the like; O_CLOEXEC
// is added.
func OpenBeneath(dir int, name string, flags int) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV,
	}
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Openat2(dir, name, &how)
		return err
	})
	if err != nil {
		return -1, &os.PathError{Op: "openat2", Path: name, Err: err}
	}
	return fd, nil
}

// MkdirInRoot makes directory name (one component) in the directory dir,
// which it opens and returns as an O_PATH fd; an existing directory is
// just opened.
func MkdirInRoot(dir int, name string, mode uint32) (int, error) {
	if err := unix.Mkdirat(dir, name, mode); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, &os.PathError{Op: "mkdirat", Path: name, Err: err}
	}
	return OpenInRoot(dir, name, unix.O_PATH|unix.O_DIRECTORY)
}

// CreateAt creates an empty regular file name in the directory dir (a
// mount point for a bind mount) and returns it as an O_PATH fd.
func CreateAt(dir int, name string, mode uint32) (int, error) {
	fd, err := unix.Openat(dir, name, unix.O_CREAT|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return -1, &os.PathError{Op: "openat", Path: name, Err: err}
	}
	Close(fd)
	return OpenInRoot(dir, name, unix.O_PATH)
}

// SetReadOnly makes the mount at the O_PATH fd dir read-only (the mount
// only, not what is mounted below it).
func SetReadOnly(dir int) error {
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
	if err := unix.MountSetattr(dir, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return os.NewSyscallError("mount_setattr", err)
	}
	return nil
}

// HideProcesses reconfigures the procfs mounted at the O_PATH fd proc
// (fspick, fsconfig reconfigure): hidepid=invisible hides the processes of
// other users from everyone without CAP_SYS_PTRACE, and with subsetPID
// only the per-process directories remain (no /proc/sys, /proc/kcore, ...).
// Options of a procfs instance apply to every mount of it.
func HideProcesses(proc int, subsetPID bool) error {
	fs, err := unix.Fspick(proc, "", unix.FSPICK_EMPTY_PATH|unix.FSPICK_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("fspick /proc", err)
	}
	defer Close(fs)
	if err := unix.FsconfigSetString(fs, "hidepid", "invisible"); err != nil {
		return os.NewSyscallError("fsconfig hidepid=invisible", err)
	}
	if subsetPID {
		if err := unix.FsconfigSetString(fs, "subset", "pid"); err != nil {
			return os.NewSyscallError("fsconfig subset=pid", err)
		}
	}
	if err := unix.FsconfigReconfigure(fs); err != nil {
		return os.NewSyscallError("fsconfig reconfigure /proc", err)
	}
	return nil
}

// MountShared reports whether the mount that fd lies on propagates mount
// events to peers (shared propagation), as the calling thread's mount
// namespace sees it.
func MountShared(fd int) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil {
		return false, os.NewSyscallError("statx", err)
	}
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return false, err
	}
	id := strconv.FormatUint(stx.Mnt_id, 10)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[0] != id {
			continue
		}
		for _, opt := range f[6:] {
			if opt == "-" {
				break
			}
			if strings.HasPrefix(opt, "shared:") {
				return true, nil
			}
		}
		return false, nil
	}
	return false, fmt.Errorf("mount %s not in mountinfo", id)
}
