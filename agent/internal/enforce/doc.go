// Package enforce makes a revocation binding in the kernel: after Revoke,
// every read, write, ioctl, mmap, mprotect, sendmsg, recvmsg and truncate
// (6.2+) on the revoked open file description fails with EPERM for every
// holder, and the description cannot be passed on (SCM_RIGHTS delivers no
// fd and sets MSG_CTRUNC; pidfd_getfd fails with EPERM), except for tasks
// in the revocation's exempt cgroup. It uses BPF LSM programs
// (bpf/enforce.c); where the kernel refuses them Load returns
// ErrUnavailable and the caller keeps revocation advisory.
//
// What it owns: the BPF maps (revoked descriptions, marked inodes, the
// iterator's arguments), the iterator program that finds the agent's own
// fd, and one BPF link per LSM hook. A revocation's key is the kernel's
// struct file of the agent's fd, found and inserted by that iterator run
// on the agent's own task: no kernel pointer reaches user space. Keys go
// away when the kernel frees the struct file (file_free_security) or the
// inode (inode_free_security), so a reused address never revokes another
// file.
//
// Fd lifetime: the Enforcer owns every fd it holds and Close closes them.
// The links, hence the enforcement, live as long as any fd refers to them:
// closing the Enforcer with no other copy lifts every revocation (fails
// open). The agent therefore keeps Files (links, maps, the iterator
// program) in systemd's fd store and passes them at the SIGUSR2 hand-off;
// a restarted agent calls Adopt, which duplicates what it adopts (the
// caller still owns and closes the fds it passed).
//
// Upgrades: Adopt takes the programs and links as they are, so after an
// upgrade the adopted (old) programs keep enforcing; the new binary's
// programs are not loaded. Names carry a layout version (capd-bpf-v1-);
// Adopt refuses names of another version and maps whose key or value size
// differ, rather than misreading them. Switching programs would mean
// loading the new ones against the adopted maps and then closing the old
// links; that is not implemented.
//
// Locking: one mutex per Enforcer serializes Revoke (the iterator's
// arguments are a single map slot); nothing else is locked, and nothing
// calls out while holding it.
package enforce
