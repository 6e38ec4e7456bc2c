// Package linux wraps the raw Linux system calls capd relies on: pidfds,
// SO_PEERPIDFD and SO_PEERCRED, PIDFD_GET_INFO, kcmp(2), F_DUPFD_QUERY,
// memfd_create(2) and sealed memfds, open_by_handle_at(2), fd classification and the
// devices of the kernel's internal mounts (KernelMounts); and, for the
// packages outside internal/, thin wrappers named after the system call
// they make (Socket, Connect, Bind, Listen, Accept4, Getsockname,
// Send, SetsockoptTimeval, SetsockoptInt, Open, Stat, Fstat, Read,
// Write, FcntlGetFD, Poll, Eventfd, InotifyInit1, InotifyAddWatch,
// InotifyRmWatch, Unshare, Setns, Execve).
//
// Every wrapper retries EINTR where its system call can fail with it
// (never close(2): see Close) and returns errors built with
// os.NewSyscallError, so errors.Is(err, unix.ESRCH) and friends keep working.
//
// Fd ownership: functions that return an int fd hand its ownership to the
// caller, who must close it exactly once; FD is the type that holds such an
// fd for its owner (Close closes once, Release hands it on). Every fd is
// created with CLOEXEC. Functions that take an fd borrow it for the
// duration of the call only.
package linux
