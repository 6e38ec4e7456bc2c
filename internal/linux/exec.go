package linux

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ExecWithFDs replaces the process image with path, argv and env, with fds
// moved to 3, 4, ... in order and every other fd above 2 closed, as the
// systemd socket-activation protocol expects.
//
// The Go runtime keeps fds of its own (epoll, eventfd) that often sit at 3
// and 4. To move fds over them without pulling them from under running
// threads, the calling thread is locked and given a private fd table with
// unshare(CLONE_FILES); only that table is rearranged, and execve(2) from
// this thread makes it the new program's table.
//
// ExecWithFDs only returns on failure, and then the calling thread's fd
// table no longer matches the rest of the process, and garbage collection
// is off (no collection may poll from that thread): the caller must report
// the error on fd 2 and exit without doing anything else.
//
// With privateProc the program also gets a mount namespace of its own
// (private propagation) with a new /proc mounted hidepid=invisible, so that
// other users' processes that share it cannot see it in /proc.
func ExecWithFDs(path string, argv, env []string, fds []int, privateProc bool) error {
	return execWithFDs(path, argv, env, fds, privateProc, nil)
}

// ExecAgentWithFDs is ExecWithFDs for the agent re-executing itself: the
// signals in block are blocked on the exec'ing thread, and so in the new
// program from its first instruction (execve keeps the signal mask), so
// that one arriving before the new program installs its handlers stays
// pending for them instead of killing it by its default action.
func ExecAgentWithFDs(path string, argv, env []string, fds []int, block []unix.Signal) error {
	return execWithFDs(path, argv, env, fds, false, block)
}

// blockSignals blocks sigs on the calling (locked) thread.
func blockSignals(sigs []unix.Signal) error {
	if len(sigs) == 0 {
		return nil
	}
	var set unix.Sigset_t
	for _, s := range sigs {
		set.Val[(s-1)/64] |= 1 << (uint(s-1) % 64)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &set, nil); err != nil {
		return os.NewSyscallError("rt_sigprocmask", err)
	}
	return nil
}

func execWithFDs(path string, argv, env []string, fds []int, privateProc bool, block []unix.Signal) error {
	// Everything that allocates or enters the runtime happens before the
	// first dup3 below: from there on this thread's private fd table no
	// longer matches the numbers the Go runtime keeps (its epoll instance
	// and eventfd), and the runtime must not use them from this thread. A
	// collection started by an allocation here ended by polling the
	// network from this thread ("netpoll failed": the process died with
	// every fd it was handing on), and a system call's return through the
	// scheduler may wake the poller by writing to its eventfd number, which
	// would then be one of the fds handed on. So: no garbage collection
	// (set before the fd table is copied, so that one under way finishes
	// with the shared table), argv and env converted first, and only raw
	// system calls after the shuffle.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(math.MaxInt64)
	argv0p, err := syscall.BytePtrFromString(path)
	if err != nil {
		return err
	}
	argvp, err := syscall.SlicePtrFromStrings(argv)
	if err != nil {
		return err
	}
	envp, err := syscall.SlicePtrFromStrings(env)
	if err != nil {
		return err
	}
	runtime.LockOSThread() // never unlocked: this thread execs or dies
	if err := unix.Unshare(unix.CLONE_FILES); err != nil {
		return os.NewSyscallError("unshare CLONE_FILES", err)
	}
	if privateProc {
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			return os.NewSyscallError("unshare CLONE_NEWNS", err)
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return os.NewSyscallError("mount --make-rprivate /", err)
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "hidepid=invisible"); err != nil {
			return os.NewSyscallError("mount /proc hidepid=invisible", err)
		}
	}
	if err := blockSignals(block); err != nil {
		return err
	}
	n := len(fds)
	// Park every fd above the target range first, so that no dup3 below can
	// overwrite an fd that is yet to be moved.
	parked := make([]int, n)
	for i, fd := range fds {
		p, err := DupCloexec(fd, 3+n)
		if err != nil {
			return err
		}
		parked[i] = p
	}
	var errno unix.Errno
	what := "dup3"
	for i := 0; i < n && errno == 0; i++ {
		_, _, errno = unix.RawSyscall(unix.SYS_DUP3, uintptr(parked[i]), uintptr(3+i), 0)
	}
	if errno == 0 {
		what = "close_range"
		_, _, errno = unix.RawSyscall(unix.SYS_CLOSE_RANGE, uintptr(3+n), ^uintptr(0), 0)
	}
	if errno == 0 {
		what = "execve " + path
		_, _, errno = unix.RawSyscall(unix.SYS_EXECVE, uintptr(unsafe.Pointer(argv0p)), uintptr(unsafe.Pointer(&argvp[0])), uintptr(unsafe.Pointer(&envp[0])))
	}
	return os.NewSyscallError(what, errno)
}

// ExecInNewMountNS re-executes the running binary with argv and env in a
// new mount namespace whose mounts are all private (no propagation to or
// from the one it came from). The pid stays the same, and so do fds
// without FD_CLOEXEC (socket activation survives).
//
// A Go process cannot move all its threads into a new mount namespace, but
// execve(2) keeps only the calling thread: so the thread is locked, given
// its own filesystem context and mount namespace (unshare), the namespace
// is made private, and that thread execs. ExecInNewMountNS only returns on
// failure. entered reports whether the calling thread had already left its
// mount namespace: it is then never unlocked, and the caller should exit.
//
// The signals in block are blocked across the exec, as in ExecAgentWithFDs.
func ExecInNewMountNS(argv, env []string, block []unix.Signal) (entered bool, err error) {
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
		runtime.UnlockOSThread() // nothing changed on this thread
		return false, os.NewSyscallError("unshare CLONE_NEWNS", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return true, os.NewSyscallError("mount --make-rprivate /", err)
	}
	// Exec the file behind /proc/self/exe by its path, so that the process
	// keeps its name (comm) rather than becoming "exe".
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil || strings.HasSuffix(exe, " (deleted)") {
		exe = "/proc/self/exe"
	}
	if err := blockSignals(block); err != nil {
		return true, err
	}
	return true, Execve(exe, argv, env)
}

// Execve replaces the process image with path, argv and env (execve(2))
// and only returns on failure. Fds without FD_CLOEXEC stay open in the new
// program. Errors name the path: "execve PATH".
func Execve(path string, argv, env []string) error {
	return os.NewSyscallError("execve "+path, unix.Exec(path, argv, env))
}

// FDOpen reports whether fd is open in the calling process.
func FDOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}
