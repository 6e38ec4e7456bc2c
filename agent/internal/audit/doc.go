// Package audit finds every process holding a copy of a store entry, and
// of recently removed entries, and says how exposed each holder is. It owns
// the /proc walk, the kcmp matching of open file descriptions, the mapping
// of removed entries' files by device and inode, the exposure
// classification of each holder (uid, dumpability, Yama's ptrace_scope,
// hidepid) and the rendering of the report into a sealed memfd (Report).
// What it learns about holders from the agent (cgroup paths, identities)
// comes through Env; the entries themselves come as Items and Tombs.
//
// It never calls into the file system of a file it looks at: a stat through
// /proc/PID/fd/N would wait forever on a FUSE mount whose server stopped
// answering. Each fd is known by its link (readlink of the magic link is
// d_path, or the pseudo file system's name for it) and, for files named by
// a path and for pidfds, by the mount id and inode of its fdinfo; the other
// anonymous inodes are known by their link's name only, since reading an
// epoll instance's fdinfo waits for its mutex, which a thread stuck in
// epoll_ctl on a stuck FUSE file holds. The agent knows its own copies the
// same way (/proc/self, never fstat), so both sides compare on the same
// terms, and a candidate is confirmed by kcmp(KCMP_FILE) against one of the
// agent's fds for that open file description (entries sharing one are
// grouped first, so each candidate costs one kcmp per open file
// description, not per entry). Once a process has such a candidate, and so
// is compared by kcmp anyway, its other files named by a path whose link
// reads as an entry's file's did for the agent are compared at once,
// without their fdinfo (unless removed entries need their inodes): a
// copy's link differs from the agent's only if the file was renamed (or
// unlinked, or a mount on its path moved) since the agent read its own,
// and then its fdinfo still finds it. So kcmp compares the same processes
// as by fdinfo alone, never one that only made a file under a name that
// reads the same.
//
// Removed entries only have the device and inode that fstat gave at
// publish (see Tomb). A candidate's mount id is mapped to its device
// through the mountinfo of the holder's mount namespace (read once per
// namespace and audit) or, for files on the kernel's internal mounts
// (sockets, pipes, memfds, pidfds), through linux.KernelMounts. Where stat
// reports another device than the superblock's (btrfs subvolumes, overlayfs
// over several file systems) or the mount is in no namespace the holder
// sees (detached), a stale copy is not found. Files on the shared anonymous
// inode (eventfd, timerfd, epoll, ...) have no identity left once the
// entry's open file description is closed, so no stale copy of them is
// reported.
//
// It walks /proc once; for each process it opens /proc/PID, which stays
// bound to that process, and reads its fds through it. Only a process found
// holding something gets a pidfd, taken by pid after the scan, for its
// cgroup and uid; a process whose directory shows it exited by the end of
// its holder's description is left out, so neither a recycled pid nor
// another process's pidfd is ever reported.
//
// What can still make it wait: a process stuck in execve, which holds its
// exec_update_lock while it closes its CLOEXEC fds (one on a stuck FUSE
// mount can make that last until the server answers or the connection is
// aborted). kcmp takes that lock, so on kernels whose fd links do not,
// only such a process that also holds an entry's file makes it wait (only
// candidates are compared). On kernels whose readlink of /proc/PID/fd/N
// takes the lock too (this project's test machine's 6.18 does: the
// readlink sits in D state until the FUSE server is resumed), any process
// stuck in execve makes the audit wait, at its first fd. Also an fd that changes between its readlink and its fdinfo read
// (internal/procfs says more).
//
// Fd ownership: the Items' fds are the caller's, which keeps each open (holds
// a reference on its entry) for the whole of Run; Run reads them through
// /proc/self and kcmp and never closes them. Run opens, per process, a
// directory fd on /proc/PID and one on /proc/PID/fd, and for a holder a
// pidfd, and closes them before moving on to the next process; it also
// opens and closes /proc/self and /proc/self/fd once, and the files
// linux.KernelMounts makes (once per process, on first need). Nothing Run
// opens outlives it. Report returns a memfd the caller owns and must
// close.
//
// Locks: there are none. Each Run makes its own auditor, used by the one
// goroutine that called Run, and shares nothing with another Run but the
// kernel's internal mounts, computed once (sync.OnceValues). Concurrent
// Runs are safe as long as the Env functions are; the caller's store is
// not touched (it passes copies: Items and Tombs).
package audit
