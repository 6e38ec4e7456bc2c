// Package fdpass sends and receives one message with SCM_RIGHTS file
// descriptors on a connected AF_UNIX socket, with plain system calls and no
// allocation on the hot path: Send and Recv on a blocking socket, and a
// Conn's, whose idle waits park on the Go runtime's poller.
//
// Fd ownership: Send borrows the fds it passes; the kernel takes its own
// reference during sendmsg. Recv hands every received fd to the caller (they
// arrive with MSG_CMSG_CLOEXEC) and, on any error, closes every fd it
// received before returning, so a failed Recv never leaks. NewConn takes
// ownership of its socket, which the Conn's Close closes once.
package fdpass

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	// ErrTruncated reports a message larger than the receive buffer
	// (MSG_TRUNC on a SOCK_SEQPACKET socket).
	ErrTruncated = errors.New("message truncated")
	// ErrControlTruncated reports control data that did not fit (MSG_CTRUNC),
	// for example more fds than the receiver accepts.
	ErrControlTruncated = errors.New("control data truncated")
	// ErrTooManyFDs reports more fds than the receiver asked for.
	ErrTooManyFDs = errors.New("too many file descriptors")
	// ErrUnexpectedControl reports a control message other than SCM_RIGHTS.
	ErrUnexpectedControl = errors.New("unexpected control message")
)

// OOBSize returns the control buffer size that holds n fds.
func OOBSize(n int) int { return unix.CmsgSpace(4 * n) }

// Send writes buf as one message on sock, with fds attached when there are
// any. It never raises SIGPIPE and retries EINTR.
func Send(sock int, buf []byte, fds ...int) error { return sendFlags(sock, buf, fds, 0) }

// sendFlags is Send with extra sendmsg flags (MSG_DONTWAIT).
func sendFlags(sock int, buf []byte, fds []int, flags int) error {
	var oob [64]byte
	var msg unix.Msghdr
	if len(buf) > 0 {
		var iov unix.Iovec
		iov.Base = &buf[0]
		iov.SetLen(len(buf))
		msg.Iov = &iov
		msg.Iovlen = 1
	}
	if len(fds) > 0 {
		space := unix.CmsgSpace(4 * len(fds))
		if space > len(oob) {
			return ErrTooManyFDs
		}
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level = unix.SOL_SOCKET
		h.Type = unix.SCM_RIGHTS
		h.SetLen(unix.CmsgLen(4 * len(fds)))
		data := oob[unix.CmsgLen(0):]
		for i, fd := range fds {
			*(*int32)(unsafe.Pointer(&data[4*i])) = int32(fd)
		}
		msg.Control = &oob[0]
		msg.SetControllen(space)
	}
	for {
		n, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(sock), uintptr(unsafe.Pointer(&msg)), uintptr(unix.MSG_NOSIGNAL|flags))
		switch e {
		case 0:
			if int(n) != len(buf) {
				return os.NewSyscallError("sendmsg", unix.EMSGSIZE)
			}
			return nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return errSendAgain
		default:
			return os.NewSyscallError("sendmsg", e)
		}
	}
}

// Recv reads one message from sock into buf and appends the fds that came
// with it to fds (at most max of them). oob must have room for the control
// data (see OOBSize); give it room for more than max fds so that surplus fds
// are reported as ErrTooManyFDs rather than ErrControlTruncated.
//
// n == 0 with no fds means the peer closed the connection (or sent an empty
// message, which capd treats the same way).
func Recv(sock int, buf, oob []byte, fds []int, max int) (n int, out []int, err error) {
	return RecvFlags(sock, buf, oob, fds, max, 0)
}

// RecvFlags is Recv with extra recvmsg flags (MSG_DONTWAIT).
func RecvFlags(sock int, buf, oob []byte, fds []int, max int, flags int) (n int, out []int, err error) {
	var msg unix.Msghdr
	var iov unix.Iovec
	if len(buf) > 0 {
		iov.Base = &buf[0]
		iov.SetLen(len(buf))
		msg.Iov = &iov
		msg.Iovlen = 1
	}
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	var r uintptr
	for {
		var e unix.Errno
		r, _, e = unix.Syscall(unix.SYS_RECVMSG, uintptr(sock), uintptr(unsafe.Pointer(&msg)), uintptr(unix.MSG_CMSG_CLOEXEC|flags))
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN {
			return 0, fds, errRecvAgain
		}
		if e != 0 {
			return 0, fds, os.NewSyscallError("recvmsg", e)
		}
		break
	}
	out, err = parseRights(oob[:msg.Controllen], fds)
	if err == nil {
		switch {
		case msg.Flags&unix.MSG_CTRUNC != 0:
			err = ErrControlTruncated
		case msg.Flags&unix.MSG_TRUNC != 0:
			err = ErrTruncated
		case len(out)-len(fds) > max:
			err = ErrTooManyFDs
		}
	}
	if err != nil {
		for _, fd := range out[len(fds):] {
			unix.Close(fd)
		}
		return 0, fds, err
	}
	return int(r), out, nil
}

// parseRights appends every fd in the control data to fds. Any control
// message other than SCM_RIGHTS is an error; its fds, and those parsed before
// it, are still appended so that the caller can close them.
func parseRights(oob []byte, fds []int) ([]int, error) {
	var err error
	for len(oob) >= unix.CmsgLen(0) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return fds, ErrControlTruncated
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			data := oob[unix.CmsgLen(0):l]
			for i := 0; i+4 <= len(data); i += 4 {
				fds = append(fds, int(*(*int32)(unsafe.Pointer(&data[i]))))
			}
		} else {
			err = ErrUnexpectedControl
		}
		space := unix.CmsgSpace(l - unix.CmsgLen(0))
		if space > len(oob) {
			break
		}
		oob = oob[space:]
	}
	return fds, err
}
