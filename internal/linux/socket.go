package linux

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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

// SetsockoptInt sets the integer socket option opt at level on sock
// (setsockopt(2)): SO_REUSEADDR. Errors name the option.
func SetsockoptInt(sock, level, opt, value int) error {
	if err := unix.SetsockoptInt(sock, level, opt, value); err != nil {
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
		case unix.SO_REUSEADDR:
			return "SO_REUSEADDR"
		}
	}
	return fmt.Sprintf("level %d option %d", level, opt)
}

// Shutdown shuts down part or all of a full-duplex connection
// (shutdown(2)); how is unix.SHUT_RD, SHUT_WR or SHUT_RDWR.
func Shutdown(sock, how int) error {
	if err := unix.Shutdown(sock, how); err != nil {
		return os.NewSyscallError("shutdown", err)
	}
	return nil
}

// Bind binds sock to sa (bind(2)).
func Bind(sock int, sa unix.Sockaddr) error {
	if err := unix.Bind(sock, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	return nil
}

// Listen marks sock as accepting connections (listen(2)).
func Listen(sock, backlog int) error {
	if err := unix.Listen(sock, backlog); err != nil {
		return os.NewSyscallError("listen", err)
	}
	return nil
}

// Accept4 accepts a connection on sock with SOCK_CLOEXEC (accept4(2)),
// retrying EINTR. EAGAIN, ECONNABORTED and the fd limits come back as
// they are, wrapped: the caller decides.
func Accept4(sock int) (int, error) {
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, _, err = unix.Accept4(sock, unix.SOCK_CLOEXEC)
		return err
	})
	if err != nil {
		return -1, os.NewSyscallError("accept4", err)
	}
	return fd, nil
}

// Getsockname returns the address sock is bound to (getsockname(2)): the
// port the kernel picked for a TCP socket bound to port 0.
func Getsockname(sock int) (unix.Sockaddr, error) {
	sa, err := unix.Getsockname(sock)
	if err != nil {
		return nil, os.NewSyscallError("getsockname", err)
	}
	return sa, nil
}

// Send writes b to the connected socket sock (sendmsg(2) with
// MSG_NOSIGNAL: a peer that went away is EPIPE, never SIGPIPE), retrying
// EINTR. Like write(2) it may send less than all of b; a send timeout
// (SO_SNDTIMEO) that expires is EAGAIN.
func Send(sock int, b []byte) (int, error) {
	var n int
	err := ignoringEINTR(func() (err error) {
		n, err = unix.SendmsgN(sock, b, nil, nil, unix.MSG_NOSIGNAL)
		return err
	})
	if err != nil {
		return n, os.NewSyscallError("sendmsg", err)
	}
	return n, nil
}

// SocketType returns the type of socket sock (SO_TYPE).
func SocketType(sock int) (int, error) {
	t, err := unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return 0, os.NewSyscallError("getsockopt SO_TYPE", err)
	}
	return t, nil
}

// ErrSocketInUse says that something accepts connections on a socket path.
var ErrSocketInUse = errors.New("something already listens on the socket")

// RemoveStaleSocket makes path free for a new listening socket of type
// sotype: nothing there is fine, a socket file nothing accepts on
// (ECONNREFUSED: its listener is gone) is removed, a live one is
// ErrSocketInUse, and anything else (a regular file, a directory) is an
// error rather than removed.
func RemoveStaleSocket(path string, sotype int) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket path: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	fd, err := Socket(unix.AF_UNIX, sotype, 0)
	if err != nil {
		return err
	}
	defer Close(fd)
	switch err := Connect(fd, &unix.SockaddrUnix{Name: path}); {
	case err == nil, errors.Is(err, unix.EAGAIN):
		return fmt.Errorf("%s: %w", path, ErrSocketInUse)
	case errors.Is(err, unix.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
		return nil
	default:
		return fmt.Errorf("probe %s: %w", path, err)
	}
}

// ListenUnix makes a listening AF_UNIX socket of type sotype (flags such
// as SOCK_NONBLOCK may be or'ed in) at path, with mode 0600: the
// directory is created if missing, a stale socket file replaced
// (RemoveStaleSocket; a live one is ErrSocketInUse), and the socket bound
// under a umask that leaves 0600, so that it never exists with other
// permissions (a caller opening it up chmods it afterwards). It returns the
// fd, which the caller owns, and the socket file's inode, for removing the
// file later only if it is still this one.
func ListenUnix(path string, sotype, backlog int) (fd int, ino uint64, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return -1, 0, fmt.Errorf("create socket directory: %w", err)
	}
	if err := RemoveStaleSocket(path, sotype&^(unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)); err != nil {
		return -1, 0, err
	}
	if fd, err = Socket(unix.AF_UNIX, sotype, 0); err != nil {
		return -1, 0, err
	}
	old := Umask(0o177)
	err = Bind(fd, &unix.SockaddrUnix{Name: path})
	Umask(old)
	if err != nil {
		Close(fd)
		return -1, 0, fmt.Errorf("bind %s: %w", path, err)
	}
	var st unix.Stat_t
	if err = Stat(path, &st); err == nil {
		err = Listen(fd, backlog)
	}
	if err != nil {
		os.Remove(path)
		Close(fd)
		return -1, 0, err
	}
	return fd, st.Ino, nil
}
