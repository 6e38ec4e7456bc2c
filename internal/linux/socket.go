package linux

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Socket creates a socket (socket(2)); SOCK_CLOEXEC is added to typ.
func Socket(domain, typ, proto int) (int, error) {
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// Connect connects sock to sa (connect(2)), retrying EINTR. A connect that
// waits can fail with EINTR on a socket with a send timeout (SO_SNDTIMEO),
// an AF_UNIX one waiting for room in a full backlog for instance; the
// socket is then still unconnected, and Connect tries again. (An
// interrupted TCP connect goes on in the background instead, and trying
// again reports EALREADY: Connect is not for those.) Errors are
// *os.SyscallError with Syscall "connect".
func Connect(sock int, sa unix.Sockaddr) error {
	if err := ignoringEINTR(func() error { return unix.Connect(sock, sa) }); err != nil {
		return os.NewSyscallError("connect", err)
	}
	return nil
}

// SetsockoptTimeval sets the timeval socket option opt at level on sock
// (setsockopt(2)): SO_RCVTIMEO, SO_SNDTIMEO. Errors name the option:
// "setsockopt SO_RCVTIMEO".
func SetsockoptTimeval(sock, level, opt int, tv *unix.Timeval) error {
	if err := unix.SetsockoptTimeval(sock, level, opt, tv); err != nil {
		return os.NewSyscallError("setsockopt "+sockoptName(level, opt), err)
	}
	return nil
}

func sockoptName(level, opt int) string {
	if level == unix.SOL_SOCKET {
		switch opt {
		case unix.SO_RCVTIMEO:
			return "SO_RCVTIMEO"
		case unix.SO_SNDTIMEO:
			return "SO_SNDTIMEO"
		}
	}
	return fmt.Sprintf("level %d option %d", level, opt)
}
