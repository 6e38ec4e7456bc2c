package enforce

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The two bpf(2) commands cilium/ebpf v0.16 does not offer for a
// task-scoped iterator. Both return fds with O_CLOEXEC (the kernel sets it
// on every bpf fd).

// iterLinkCreate is BPF_LINK_CREATE for an iter program limited to one
// task (bpf_iter_link_info.task.tid; kernels 6.1 and later).
func iterLinkCreate(progFD, tid int) (int, error) {
	var info struct {
		tid, pid, pidFD uint32
		_               uint32
	}
	info.tid = uint32(tid)
	var attr struct {
		progFD      uint32
		targetFD    uint32
		attachType  uint32
		flags       uint32
		iterInfo    uint64
		iterInfoLen uint32
		_           [28]byte
	}
	attr.progFD = uint32(progFD)
	attr.attachType = unix.BPF_TRACE_ITER
	attr.iterInfo = uint64(uintptr(unsafe.Pointer(&info)))
	attr.iterInfoLen = uint32(unsafe.Sizeof(info))
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_LINK_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return -1, os.NewSyscallError("bpf BPF_LINK_CREATE", errno)
	}
	return int(fd), nil
}

// iterCreate is BPF_ITER_CREATE: an fd whose reads run the iterator.
func iterCreate(linkFD int) (int, error) {
	attr := struct{ linkFD, flags uint32 }{linkFD: uint32(linkFD)}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_ITER_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return -1, os.NewSyscallError("bpf BPF_ITER_CREATE", errno)
	}
	return int(fd), nil
}
