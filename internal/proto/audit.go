package proto

import "time"

// AuditReport is the JSON document an AUDIT reply carries in a sealed
// memfd.
type AuditReport struct {
	Time time.Time `json:"time"`
	// PtraceScope is /proc/sys/kernel/yama/ptrace_scope (-1: no Yama).
	PtraceScope int `json:"ptrace_scope"`
	// Processes and FDs are how many processes and fds were examined.
	Processes int `json:"processes"`
	FDs       int `json:"fds"`
	// Entries are the live entries with every process holding their open
	// file description.
	Entries []AuditEntry `json:"entries"`
	// Removed are entries revoked, expired or dropped (the last 1024) whose
	// file some process still has open: stale copies.
	Removed []AuditEntry `json:"removed"`
}

// AuditEntry is one entry and its holders.
type AuditEntry struct {
	Owner   string        `json:"owner"`
	Name    string        `json:"name"`
	Kind    string        `json:"kind"`
	Removed time.Time     `json:"removed,omitzero"`
	Holders []AuditHolder `json:"holders"`
}

// AuditHolder is a process holding a copy. For live entries the agent
// compared open file descriptions (kcmp); for removed ones, whose fd it
// closed, only the file (device and inode).
type AuditHolder struct {
	PID      int    `json:"pid"`
	Identity string `json:"identity"`
	Cgroup   string `json:"cgroup"`
	UID      int    `json:"uid"`
	FD       int    `json:"fd"`
	// Dumpable is false when the kernel marks the process non-dumpable
	// (then only CAP_SYS_PTRACE reaches its fds); unknown for uid 0.
	Dumpable *bool `json:"dumpable,omitempty"`
	// ProcHidden: the /proc of the holder's mount namespace has hidepid.
	ProcHidden bool `json:"proc_hidden"`
	// Exposed: a process without CAP_SYS_PTRACE (same uid) can reach its
	// fds with pidfd_getfd or /proc/PID/fd; Exposure says how.
	Exposed  bool     `json:"exposed"`
	Exposure []string `json:"exposure,omitempty"`
}
