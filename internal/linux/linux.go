package linux

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ignoringEINTR calls fn until it returns something other than EINTR.
func ignoringEINTR(fn func() error) error {
	for {
		err := fn()
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// PeerPidfd returns a pidfd for the process that connected the AF_UNIX socket
// sock (SO_PEERPIDFD, Linux >= 6.5). The pidfd is O_CLOEXEC.
func PeerPidfd(sock int) (int, error) {
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		return err
	})
	if err != nil {
		return -1, os.NewSyscallError("getsockopt SO_PEERPIDFD", err)
	}
	return fd, nil
}

// PeerCred returns the credentials the peer of sock had when it connected.
func PeerCred(sock int) (*unix.Ucred, error) {
	cred, err := unix.GetsockoptUcred(sock, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt SO_PEERCRED", err)
	}
	return cred, nil
}

// PidfdGetInfo issues PIDFD_GET_INFO (Linux >= 6.13) asking for mask.
// It fails with ESRCH when the process has exited, and with ENOTTY or EINVAL
// on kernels without the ioctl.
func PidfdGetInfo(pidfd int, mask uint64) (*unix.PidfdInfo, error) {
	info := new(unix.PidfdInfo)
	err := ignoringEINTR(func() error {
		*info = unix.PidfdInfo{Mask: mask}
		return unix.IoctlPidfdInfo(pidfd, info)
	})
	if err != nil {
		return nil, os.NewSyscallError("ioctl PIDFD_GET_INFO", err)
	}
	return info, nil
}

// PidfdOpen opens a pidfd for pid (O_CLOEXEC is implied by the kernel).
func PidfdOpen(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, os.NewSyscallError("pidfd_open", err)
	}
	return fd, nil
}

// PidfdAlive reports whether the process behind pidfd is still running
// (pidfd_send_signal with signal 0). A false result is final: pidfds never
// refer to a recycled pid.
func PidfdAlive(pidfd int) (bool, error) {
	err := unix.PidfdSendSignal(pidfd, 0, nil, 0)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ESRCH):
		return false, nil
	default:
		return false, os.NewSyscallError("pidfd_send_signal", err)
	}
}

// KCMP_FILE from <linux/kcmp.h>.
const kcmpFile = 0

// PidfdPid returns the pid behind pidfd in the caller's pid namespace, from
// /proc/self/fdinfo (Linux >= 5.10 shows it); ESRCH if the process has
// exited, EBADF if fd is not a pidfd.
func PidfdPid(pidfd int) (int, error) {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(pidfd))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid, err := strconv.Atoi(strings.TrimSpace(v))
			switch {
			case err != nil:
				return 0, fmt.Errorf("fdinfo of pidfd %d: %w", pidfd, err)
			case pid <= 0:
				return 0, os.NewSyscallError("pidfd", unix.ESRCH)
			}
			return pid, nil
		}
	}
	return 0, os.NewSyscallError("pidfd", unix.EBADF)
}

// Kcmp compares fd1 of pid1 with fd2 of pid2 (kcmp(2), KCMP_FILE). It returns
// true when both refer to the same open file description.
func Kcmp(pid1, pid2, fd1, fd2 int) (bool, error) {
	var r uintptr
	err := ignoringEINTR(func() error {
		var e unix.Errno
		r, _, e = unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), kcmpFile, uintptr(fd1), uintptr(fd2), 0)
		if e != 0 {
			return e
		}
		return nil
	})
	if err != nil {
		return false, os.NewSyscallError("kcmp", err)
	}
	return r == 0, nil
}

// DupfdQuery asks the kernel whether fd and other refer to the same open
// file description (fcntl F_DUPFD_QUERY, Linux >= 6.10). Kernels without it
// fail with EINVAL.
func DupfdQuery(fd, other int) (bool, error) {
	var r int
	err := ignoringEINTR(func() (err error) {
		r, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_QUERY, other)
		return err
	})
	if err != nil {
		return false, os.NewSyscallError("fcntl F_DUPFD_QUERY", err)
	}
	return r == 1, nil
}

// noDupfdQuery is set once the kernel answered F_DUPFD_QUERY with EINVAL
// (before Linux 6.10).
var noDupfdQuery atomic.Bool

// SameDescription reports whether this process's fds a and b refer to
// the same open file description: F_DUPFD_QUERY where the kernel has it,
// else kcmp(KCMP_FILE) of the process with itself.
func SameDescription(a, b int) (bool, error) {
	if !noDupfdQuery.Load() {
		same, err := DupfdQuery(a, b)
		if err == nil || !errors.Is(err, unix.EINVAL) {
			return same, err
		}
		noDupfdQuery.Store(true)
	}
	pid := os.Getpid()
	return Kcmp(pid, pid, a, b)
}

// MemfdCreate creates an anonymous memory file with MFD_CLOEXEC and
// MFD_ALLOW_SEALING set.
func MemfdCreate(name string) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, os.NewSyscallError("memfd_create", err)
	}
	return fd, nil
}

// SealAll applies every memfd seal, making the file immutable and empty
// forever: a pure capability token.
func SealAll(fd int) error {
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return os.NewSyscallError("fcntl F_ADD_SEALS", err)
	}
	return nil
}

// DupCloexec duplicates fd to the lowest free number >= min, with CLOEXEC.
func DupCloexec(fd, min int) (int, error) {
	var nfd int
	err := ignoringEINTR(func() (err error) {
		nfd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, min)
		return err
	})
	if err != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	return nfd, nil
}

// Close closes fd, ignoring EINTR (Linux releases the fd even then).
func Close(fd int) error {
	if err := unix.Close(fd); err != nil && !errors.Is(err, unix.EINTR) {
		return os.NewSyscallError("close", err)
	}
	return nil
}

// SetNonDumpable clears the dumpable flag of the calling process, so that
// other users cannot ptrace it, read its /proc/PID/fd or pidfd_getfd from it.
func SetNonDumpable() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return os.NewSyscallError("prctl PR_SET_DUMPABLE", err)
	}
	return nil
}

// RaiseNofile raises the soft RLIMIT_NOFILE to the hard limit and returns
// the new soft limit. (The Go runtime does the same at start-up; doing it
// explicitly makes the limit the agent plans with the one in force.)
func RaiseNofile() (int, error) {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return 0, os.NewSyscallError("getrlimit", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
			return 0, os.NewSyscallError("setrlimit", err)
		}
	}
	return int(min(l.Cur, 1<<30)), nil
}

// OpenFDs counts the calling process's open fds.
func OpenFDs() (int, error) {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	return len(names) - 1, err // minus the directory's own fd
}

// FileID returns the device and inode of the file open at fd.
func FileID(fd int) (dev, ino uint64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, 0, os.NewSyscallError("fstat", err)
	}
	return st.Dev, st.Ino, nil
}

// FdKind classifies the open file behind fd for humans: "path" (an O_PATH
// fd, of a file or a directory: it names the file but cannot read, write
// or map it), "socket", "pipe", "memfd", "tmpfile", "file", "dir",
// "chardev", "blockdev", "eventfd", "pidfd", "anon:NAME" or "unknown".
//
// A regular file of the kernel's internal shmem mount is a "memfd", known
// by its device without reading its name: memfd_create(2) makes them, and
// so does the kernel for SysV and anonymous shared memory, which a
// process can open only through /proc/PID/map_files (with CAP_SYS_ADMIN
// or CAP_CHECKPOINT_RESTORE). Other memfds (MFD_HUGETLB's) are known by
// their name, "/memfd:NAME".
func FdKind(fd int) string {
	kind, _, _, _ := DescribeFD(fd)
	return kind
}

// DescribeFD is FdKind and FileID at once, with one fstat(2): the kind of
// the file behind fd, and its device and inode; err only if fstat fails.
func DescribeFD(fd int) (kind string, dev, ino uint64, err error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return "unknown", 0, 0, os.NewSyscallError("fcntl", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "unknown", 0, 0, os.NewSyscallError("fstat", err)
	}
	return fdKind(fd, fl, &st), st.Dev, st.Ino, nil
}

// shmemDev is the device of the kernel's internal shmem mount, where
// memfds live; ok is false if no memfd could be made to find it.
var shmemDev = sync.OnceValues(func() (dev uint64, ok bool) {
	fd, err := MemfdCreate("capd-probe")
	if err != nil {
		return 0, false
	}
	defer Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0, false
	}
	return st.Dev, true
})

func fdKind(fd, fl int, st *unix.Stat_t) string {
	if fl&unix.O_PATH != 0 {
		// fstat works on O_PATH fds too, and would call them files or
		// directories.
		return "path"
	}
	if dev, ok := shmemDev(); ok && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Dev == dev {
		return "memfd"
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFIFO:
		return "pipe"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFCHR:
		return "chardev"
	case unix.S_IFBLK:
		return "blockdev"
	case unix.S_IFLNK:
		return "symlink"
	}
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "unknown"
	}
	switch {
	case strings.HasPrefix(target, "/memfd:"):
		return "memfd"
	case strings.HasPrefix(target, "anon_inode:"):
		name := strings.Trim(strings.TrimPrefix(target, "anon_inode:"), "[]")
		switch name {
		case "eventfd", "pidfd", "signalfd", "timerfd", "eventpoll", "inotify":
			return name
		}
		return "anon:" + name
	case st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 0:
		return "tmpfile"
	case st.Mode&unix.S_IFMT == unix.S_IFREG:
		return "file"
	}
	return "unknown"
}

// OpenKernfsByID opens the kernfs node with 64-bit id (a cgroup id on a
// cgroup2 mount) relative to mountFD with O_PATH|O_CLOEXEC.
func OpenKernfsByID(mountFD int, id uint64) (int, error) {
	const fileidKernfs = 0xfe
	var b [8]byte
	*(*uint64)(unsafe.Pointer(&b[0])) = id
	fd, err := unix.OpenByHandleAt(mountFD, unix.NewFileHandle(fileidKernfs, b[:]), unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return -1, os.NewSyscallError("open_by_handle_at", err)
	}
	return fd, nil
}

// FdPath returns what /proc/self/fd/FD points to.
func FdPath(fd int) (string, error) {
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", fmt.Errorf("read fd path: %w", err)
	}
	return p, nil
}

// KernelMounts returns the device of each of the kernel's internal mounts
// whose files belong to no mount namespace, by mount id (the mnt_id of
// /proc/PID/fdinfo): sockfs, pipefs, the shmem mount behind memfds, pidfs
// (Linux >= 6.9), nsfs and the anonymous inode mount. It makes one file of
// each kind, statx(2)s it (none of these file systems leaves the kernel)
// and closes it. These mounts live as long as the kernel does. Kinds this
// kernel cannot make are left out and named in the error.
func KernelMounts() (map[int]uint64, error) {
	out := make(map[int]uint64)
	var errs []error
	add := func(what string, fd int, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			return
		}
		defer Close(fd)
		var st unix.Statx_t
		if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, os.NewSyscallError("statx", err)))
			return
		}
		if st.Mask&unix.STATX_MNT_ID != 0 {
			out[int(st.Mnt_id)] = unix.Mkdev(st.Dev_major, st.Dev_minor)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	add("socket", fd, os.NewSyscallError("socket", err))
	var p [2]int
	err = unix.Pipe2(p[:], unix.O_CLOEXEC)
	if err == nil {
		Close(p[1])
	}
	add("pipe", p[0], os.NewSyscallError("pipe2", err))
	fd, err = MemfdCreate("capd-probe")
	add("memfd", fd, err)
	fd, err = PidfdOpen(os.Getpid())
	add("pidfd", fd, err)
	fd, err = unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	add("nsfs", fd, os.NewSyscallError("open /proc/self/ns/net", err))
	fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	add("eventfd", fd, os.NewSyscallError("eventfd", err))
	return out, errors.Join(errs...)
}
