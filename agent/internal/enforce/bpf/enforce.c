// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * capd's kernel-enforced revocation (package agent/internal/enforce).
 *
 * revoked: struct file * (of the agent's own fd) -> struct revocation.
 * Every LSM hook below that acts on an open file description denies with
 * EPERM when the description is in revoked, unless the calling task's
 * cgroup v2 id is the revocation's exempt cgroup. inodes: the same for
 * struct inode *, checked at file_open only (a re-open through
 * /proc/PID/fd/N of an anonymous file). Keys are removed when the kernel
 * frees the struct file or inode, so an address reused for another object
 * is never revoked by accident.
 *
 * The agent never sees a kernel pointer. It names the file to revoke by
 * calling ioctl(fd, CAPD_REVOKE_IOCTL) on its own fd: file_ioctl, seeing
 * that command from the agent's own process (args.agent_tgid), inserts the
 * key itself, reports it in args.result and ends the ioctl with ECANCELED,
 * in constant time. Where that cannot work (an O_PATH fd, which ioctl
 * refuses before any hook, or an agent whose pid is not the init
 * namespace's), find_fd, a task_file iterator the agent runs on its own
 * task only, does the same for args.fd, walking the agent's fd table.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keep in sync with revocation in enforce.go. */
struct revocation {
	__u64 exempt_cgroup_id; /* 0: nobody is exempt */
	__u64 id;               /* the agent's revocation number */
};

/* Keep in sync with iterArgs in enforce.go. */
struct args {
	__u32 fd;         /* in: the agent's fd */
	__u32 mark_inode; /* in: also put the file's inode in inodes */
	struct revocation rev; /* in */
	__s64 result;     /* out: 0 fd not seen, 1 revoked, <0 -errno of the map update */
	__u32 agent_tgid; /* in: the agent's pid (init namespace): who may use CAPD_REVOKE_IOCTL */
	__u32 pad;
};

/* The agent's own request to file_ioctl; no driver ever sees it from the
 * agent. Keep in sync with revokeIoctl in enforce.go. */
#define CAPD_REVOKE_IOCTL 0xcafd0001u

/*
 * A plain hash, never LRU: an eviction would lift a revocation silently.
 * Full: the agent's Revoke returns ErrFull. max_entries is the number of
 * descriptions (inodes) revoked at once whose struct file is still alive.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct revocation);
} revoked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct revocation);
} inodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct args);
} iter_args SEC(".maps");

static __always_inline int deny(void *map, const void *obj)
{
	__u64 key = (__u64)obj;
	struct revocation *r;

	if (!key)
		return 0;
	r = bpf_map_lookup_elem(map, &key);
	if (!r)
		return 0;
	if (r->exempt_cgroup_id && r->exempt_cgroup_id == bpf_get_current_cgroup_id())
		return 0;
	return -EPERM;
}

/* insert puts file (and its inode, if asked) in the maps as a says. */
static __always_inline void insert(struct args *a, struct file *file)
{
	__u64 key = (__u64)file;
	long err;

	err = bpf_map_update_elem(&revoked, &key, &a->rev, BPF_ANY);
	if (err) {
		a->result = (__s32)err; /* 6.1 zero-extends the helper's int */
		return;
	}
	if (a->mark_inode) {
		__u64 ikey = (__u64)file->f_inode;

		err = bpf_map_update_elem(&inodes, &ikey, &a->rev, BPF_ANY);
		if (err) {
			bpf_map_delete_elem(&revoked, &key);
			a->result = (__s32)err; /* 6.1 zero-extends the helper's int */
			return;
		}
	}
	a->result = 1;
}

SEC("iter/task_file")
int find_fd(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	__u32 zero = 0;
	struct args *a;

	if (!file)
		return 0;
	a = bpf_map_lookup_elem(&iter_args, &zero);
	if (!a || ctx->fd != a->fd)
		return 0;
	insert(a, file);
	return 0;
}

SEC("lsm/file_permission")
int BPF_PROG(file_permission, struct file *file, int mask)
{
	return deny(&revoked, file);
}

SEC("lsm/file_ioctl")
int BPF_PROG(file_ioctl, struct file *file, unsigned int cmd, unsigned long arg)
{
	if (cmd == CAPD_REVOKE_IOCTL) {
		__u32 zero = 0;
		struct args *a = bpf_map_lookup_elem(&iter_args, &zero);

		if (a && a->agent_tgid && (__u32)(bpf_get_current_pid_tgid() >> 32) == a->agent_tgid) {
			insert(a, file);
			return -ECANCELED;
		}
	}
	return deny(&revoked, file);
}

/* 6.8 and later; optional. */
SEC("lsm/file_ioctl_compat")
int BPF_PROG(file_ioctl_compat, struct file *file, unsigned int cmd, unsigned long arg)
{
	return deny(&revoked, file);
}

SEC("lsm/mmap_file")
int BPF_PROG(mmap_file, struct file *file, unsigned long reqprot, unsigned long prot, unsigned long flags)
{
	return deny(&revoked, file);
}

SEC("lsm/file_mprotect")
int BPF_PROG(file_mprotect, struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot)
{
	return deny(&revoked, vma->vm_file);
}

SEC("lsm/socket_sendmsg")
int BPF_PROG(socket_sendmsg, struct socket *sock, struct msghdr *msg, int size)
{
	return deny(&revoked, sock->file);
}

SEC("lsm/socket_recvmsg")
int BPF_PROG(socket_recvmsg, struct socket *sock, struct msghdr *msg, int size, int flags)
{
	return deny(&revoked, sock->file);
}

SEC("lsm/file_receive")
int BPF_PROG(file_receive, struct file *file)
{
	return deny(&revoked, file);
}

/* 6.2 and later; optional. */
SEC("lsm/file_truncate")
int BPF_PROG(file_truncate, struct file *file)
{
	return deny(&revoked, file);
}

SEC("lsm/file_open")
int BPF_PROG(file_open, struct file *file)
{
	return deny(&inodes, file->f_inode);
}

SEC("lsm/file_free_security")
int BPF_PROG(file_free, struct file *file)
{
	__u64 key = (__u64)file;

	bpf_map_delete_elem(&revoked, &key);
	return 0;
}

SEC("lsm/inode_free_security")
int BPF_PROG(inode_free, struct inode *inode)
{
	__u64 key = (__u64)inode;

	bpf_map_delete_elem(&inodes, &key);
	return 0;
}
