// Package procfs reads what capd learns about other processes' fds from
// /proc without calling into the file systems those fds' files live on: the
// fd table (getdents of /proc/PID/fd), each fd's link (readlink of
// /proc/PID/fd/N, which is d_path or the pseudo file system's d_dname: no
// request to the file's file system), its fdinfo (mnt_id and ino, read from
// the kernel's struct file and inode), and mountinfo (mount id to device).
// Nothing here stats or opens a process's files through their magic links:
// on a FUSE mount whose server has stopped answering, that waits forever.
//
// Reading fdinfo still runs the file's show_fdinfo method, if its file
// operations have one. For epoll that takes the epoll instance's mutex,
// which a thread stuck in epoll_ctl on a stuck FUSE file holds for as long
// as the server does not answer; so callers read the link first and read
// fdinfo only for files named by a path (and pidfds), never for the other
// anonymous inodes (see Classify). The fd can change between the two reads
// (the owner closes it and opens another under the same number); that race
// is the caller's to accept. Reading a link or fdinfo also takes a passing
// reference on the file: if the owner closes its last fd meanwhile, the
// final release runs on the reader's thread (as for every reader of /proc).
//
// Fd ownership: a Dir owns one directory fd on /proc/PID, opened by Open and
// closed by Close; an FDTable one on /proc/PID/fd, opened by Dir.FDTable and
// closed by its Close. Every other fd is opened and closed inside the call
// that needs it. All fds are O_CLOEXEC.
//
// A Dir is bound to the process it was opened for (procfs ties the
// directory to the struct pid), and so is its FDTable: once that process has
// exited, reads through either fail with ESRCH or ENOENT even if its pid
// number has been reused, and Dir.Alive says false.
//
// Errors are built with os.NewSyscallError, so errors.Is(err, unix.ENOENT)
// and friends keep working; EINTR is retried.
package procfs
