package linux

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Namespace ioctls. x/sys/unix does not define them yet.
const (
	// <linux/pidfd.h>: _IO(PIDFS_IOCTL_MAGIC, n), Linux >= 6.11.
	pidfdGetPIDNamespace  = 0xff05
	pidfdGetUserNamespace = 0xff09
	// <linux/nsfs.h>: _IO(NSIO, n).
	nsGetParent   = 0xb702
	nsGetOwnerUID = 0xb704
)

// NsID identifies a namespace: the device and inode of its nsfs file.
type NsID struct{ Dev, Ino uint64 }

// Namespace kinds for PidfdNamespace and ProcNamespace.
const (
	UserNS = "user"
	PIDNS  = "pid"
)

// PidfdNamespace opens the kind namespace of the process behind pidfd
// (PIDFD_GET_*_NAMESPACE, Linux >= 6.11). The caller needs ptrace read
// access to the process (EACCES otherwise); kernels without the ioctl fail
// with ENOTTY or EINVAL, and an exited process with ESRCH.
func PidfdNamespace(pidfd int, kind string) (int, error) {
	var req uintptr
	switch kind {
	case UserNS:
		req = pidfdGetUserNamespace
	case PIDNS:
		req = pidfdGetPIDNamespace
	default:
		return -1, fmt.Errorf("pidfd namespace %q: %w", kind, unix.EINVAL)
	}
	var fd int
	err := ignoringEINTR(func() error {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(pidfd), req, 0)
		if e != 0 {
			return e
		}
		fd = int(r)
		return nil
	})
	if err != nil {
		return -1, os.NewSyscallError("ioctl PIDFD_GET_"+strings.ToUpper(kind)+"_NAMESPACE", err)
	}
	// The kernel opens namespace fds with O_CLOEXEC.
	return fd, nil
}

// ProcNamespace opens /proc/PID/ns/KIND. The caller must check afterwards,
// with a pidfd, that pid still names the same process.
func ProcNamespace(pid int, kind string) (int, error) {
	p := "/proc/" + strconv.Itoa(pid) + "/ns/" + kind
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return fd, nil
}

// NamespaceID returns the identity of the namespace open at fd.
func NamespaceID(fd int) (NsID, error) {
	var st unix.Stat_t
	if err := ignoringEINTR(func() error { return unix.Fstat(fd, &st) }); err != nil {
		return NsID{}, os.NewSyscallError("fstat", err)
	}
	return NsID{st.Dev, st.Ino}, nil
}

// SelfNamespace returns the identity of the calling process's kind
// namespace.
func SelfNamespace(kind string) (NsID, error) {
	var st unix.Stat_t
	p := "/proc/self/ns/" + kind
	if err := ignoringEINTR(func() error { return unix.Stat(p, &st) }); err != nil {
		return NsID{}, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	return NsID{st.Dev, st.Ino}, nil
}

// NsParent opens the parent of the user or pid namespace open at fd
// (NS_GET_PARENT). It fails with EPERM when the parent lies outside the
// caller's own namespace (the caller's namespace or an ancestor of it is
// the one at fd).
func NsParent(fd int) (int, error) {
	var pfd int
	err := ignoringEINTR(func() error {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetParent, 0)
		if e != 0 {
			return e
		}
		pfd = int(r)
		return nil
	})
	if err != nil {
		return -1, os.NewSyscallError("ioctl NS_GET_PARENT", err)
	}
	return pfd, nil
}

// NsOwnerUID returns the uid, in the caller's user namespace, of the
// creator of the user namespace open at fd (NS_GET_OWNER_UID).
func NsOwnerUID(fd int) (uint32, error) {
	var uid uint32
	err := ignoringEINTR(func() error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetOwnerUID, uintptr(unsafe.Pointer(&uid)))
		if e != 0 {
			return e
		}
		return nil
	})
	if err != nil {
		return 0, os.NewSyscallError("ioctl NS_GET_OWNER_UID", err)
	}
	return uid, nil
}

// Capability bits (<linux/capability.h>) capd decides with.
const (
	CapSysAdmin  = 21
	CapSysPtrace = 19
)

// ProcStatus is what capd reads from /proc/PID/status.
type ProcStatus struct {
	// CapEff and CapPrm are the effective and permitted capability sets,
	// relative to the process's own user namespace.
	CapEff, CapPrm uint64
	// PIDDepth is how many pid namespaces the process is visible in, as
	// seen from the reader's (the fields of NSpid): a process in the
	// reader's own pid namespace has the reader's depth, one in a child pid
	// namespace more.
	PIDDepth int
}

// ErrNoStatusField reports a /proc/PID/status without a field capd needs.
var ErrNoStatusField = errors.New("field missing in /proc/PID/status")

// ReadProcStatus reads /proc/PID/status ("self" for the caller). The
// caller must check afterwards, with a pidfd, that pid still names the same
// process.
func ReadProcStatus(pid string) (ProcStatus, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return ProcStatus{}, err
	}
	return parseProcStatus(b)
}

func parseProcStatus(b []byte) (ProcStatus, error) {
	var st ProcStatus
	var haveCaps, haveNS bool
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		switch string(k) {
		case "CapEff", "CapPrm":
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
			if err != nil {
				return ProcStatus{}, fmt.Errorf("/proc/PID/status %s %q: %w", k, v, err)
			}
			if string(k) == "CapEff" {
				st.CapEff, haveCaps = n, true
			} else {
				st.CapPrm = n
			}
		case "NSpid":
			st.PIDDepth, haveNS = len(bytes.Fields(v)), true
		}
	}
	switch {
	case !haveCaps:
		return ProcStatus{}, fmt.Errorf("CapEff: %w", ErrNoStatusField)
	case !haveNS || st.PIDDepth == 0:
		return ProcStatus{}, fmt.Errorf("NSpid: %w", ErrNoStatusField)
	}
	return st, nil
}

// HasCap reports whether the effective set holds capability bit c.
func (s ProcStatus) HasCap(c uint) bool { return s.CapEff&(1<<c) != 0 }

// Unshare gives the calling thread its own copy of what flags name
// (unshare(2)): CLONE_FS, CLONE_FILES, CLONE_NEWNS, ... Lock the thread
// first (runtime.LockOSThread). Errors name the flags: "unshare CLONE_FS".
func Unshare(flags int) error {
	if err := unix.Unshare(flags); err != nil {
		return os.NewSyscallError("unshare "+cloneFlagNames(flags), err)
	}
	return nil
}

// Setns moves the calling thread into the namespace fd names, a namespace
// file or a pidfd (setns(2)); nstype is 0 or the CLONE_NEW* kind that fd
// must be. Lock the thread first.
func Setns(fd, nstype int) error {
	if err := unix.Setns(fd, nstype); err != nil {
		return os.NewSyscallError("setns", err)
	}
	return nil
}

var cloneFlags = []struct {
	flag int
	name string
}{
	{unix.CLONE_FILES, "CLONE_FILES"},
	{unix.CLONE_FS, "CLONE_FS"},
	{unix.CLONE_NEWCGROUP, "CLONE_NEWCGROUP"},
	{unix.CLONE_NEWIPC, "CLONE_NEWIPC"},
	{unix.CLONE_NEWNET, "CLONE_NEWNET"},
	{unix.CLONE_NEWNS, "CLONE_NEWNS"},
	{unix.CLONE_NEWPID, "CLONE_NEWPID"},
	{unix.CLONE_NEWTIME, "CLONE_NEWTIME"},
	{unix.CLONE_NEWUSER, "CLONE_NEWUSER"},
	{unix.CLONE_NEWUTS, "CLONE_NEWUTS"},
	{unix.CLONE_SYSVSEM, "CLONE_SYSVSEM"},
}

// cloneFlagNames spells flags as "CLONE_FS|CLONE_NEWNS", with unnamed bits
// in hex.
func cloneFlagNames(flags int) string {
	var names []string
	for _, f := range cloneFlags {
		if flags&f.flag != 0 {
			names = append(names, f.name)
			flags &^= f.flag
		}
	}
	if flags != 0 || len(names) == 0 {
		names = append(names, fmt.Sprintf("%#x", flags))
	}
	return strings.Join(names, "|")
}

// OpenOwnMountNS opens the calling thread's mount namespace WITHOUT
// FD_CLOEXEC, to be passed across an exec. The caller owns the fd.
func OpenOwnMountNS() (int, error) {
	const p = "/proc/thread-self/ns/mnt"
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return fd, nil
}

// CheckMountNS reports why fd is not a mount namespace (NS_GET_NSTYPE).
func CheckMountNS(fd int) error {
	t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return os.NewSyscallError("ioctl NS_GET_NSTYPE", err)
	}
	if t != unix.CLONE_NEWNS {
		return errors.New("not a mount namespace")
	}
	return nil
}
