package linux

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrWidens reports a derived description that would hold more access
// than the one it is made from.
var ErrWidens = errors.New("would widen access")

// Reopen returns a new open file description of the regular file (or
// memfd) fd refers to, opened through /proc/self/fd, whose magic link
// reaches unlinked and anonymous files too. It has fd's access mode, or
// read-only with readOnly, and keeps O_APPEND: never more access than fd
// has. A write-only fd cannot give a read-only one (ErrWidens). The caller
// owns the returned fd.
func Reopen(fd int, readOnly bool) (int, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return -1, os.NewSyscallError("fcntl F_GETFL", err)
	}
	if fl&unix.O_PATH != 0 {
		return -1, fmt.Errorf("an O_PATH fd cannot be reopened with access it lacks: %w", ErrWidens)
	}
	mode := fl & unix.O_ACCMODE
	if readOnly {
		if mode == unix.O_WRONLY {
			return -1, fmt.Errorf("a write-only fd cannot give a read-only one: %w", ErrWidens)
		}
		mode = unix.O_RDONLY
	}
	flags := mode | fl&unix.O_APPEND | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	var n int
	err = ignoringEINTR(func() (err error) {
		n, err = unix.Open(p, flags, 0)
		return err
	})
	if err != nil {
		return -1, &os.PathError{Op: "reopen", Path: p, Err: err}
	}
	// O_NONBLOCK kept a FIFO swapped in for the file from blocking the
	// open; a regular file's description does not need it.
	if _, err := unix.FcntlInt(uintptr(n), unix.F_SETFL, flags&unix.O_APPEND); err != nil {
		Close(n)
		return -1, os.NewSyscallError("fcntl F_SETFL", err)
	}
	return n, nil
}

// Mount attributes for Detached.
const (
	MountReadOnly = unix.MOUNT_ATTR_RDONLY
	MountNoSuid   = unix.MOUNT_ATTR_NOSUID
	MountNoDev    = unix.MOUNT_ATTR_NODEV
	MountNoExec   = unix.MOUNT_ATTR_NOEXEC
)

// Detached returns an fd at the root of a new detached mount of the file
// or directory fd refers to (open_tree with OPEN_TREE_CLONE), with the
// mount attributes attrs set (mount_setattr). A directory's mount clones
// the mounts below it too (AT_RECURSIVE), so that what they cover stays
// covered, and attrs apply to all of them; ".." at the root of a detached
// mount stays there, so the fd reaches the tree and nothing above it. A
// file's mount is of that file alone: on a read-only one, neither a
// reopen through /proc nor fchmod can make it writable. The mount lives
// as long as some fd on it does. The caller owns the returned fd, opened
// read-only (a directory: O_DIRECTORY).
//
// The kernel clones only mounts of the caller's own mount namespace: a
// file from another one (a container's, or the kernel's internal mount
// of memfds) fails with EINVAL.
func Detached(fd int, attrs uint64, dir bool) (int, error) {
	flags := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC | unix.AT_EMPTY_PATH
	setFlags := unix.AT_EMPTY_PATH
	if dir {
		flags |= unix.AT_RECURSIVE
		setFlags |= unix.AT_RECURSIVE
	}
	tree, err := unix.OpenTree(fd, "", uint(flags))
	if err != nil {
		return -1, os.NewSyscallError("open_tree", err)
	}
	defer Close(tree)
	if attrs != 0 {
		attr := unix.MountAttr{Attr_set: attrs}
		if err := unix.MountSetattr(tree, "", uint(setFlags), &attr); err != nil {
			return -1, os.NewSyscallError("mount_setattr", err)
		}
	}
	var n int
	err = ignoringEINTR(func() (err error) {
		if dir {
			n, err = unix.Openat(tree, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		} else {
			n, err = unix.Open("/proc/self/fd/"+strconv.Itoa(tree), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		}
		return err
	})
	if err != nil {
		return -1, os.NewSyscallError("open", err)
	}
	if !dir {
		if _, err := unix.FcntlInt(uintptr(n), unix.F_SETFL, 0); err != nil {
			Close(n)
			return -1, os.NewSyscallError("fcntl F_SETFL", err)
		}
	}
	return n, nil
}

// AccessMode returns fd's O_ACCMODE bits and whether it is O_PATH.
func AccessMode(fd int) (mode int, path bool, err error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return 0, false, os.NewSyscallError("fcntl F_GETFL", err)
	}
	return fl & unix.O_ACCMODE, fl&unix.O_PATH != 0, nil
}
