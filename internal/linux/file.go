package linux

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Open opens path with flags (O_CLOEXEC is added) and mode, retrying EINTR
// (an open that waits, as for a FIFO, can be interrupted). Errors name the
// path: "open PATH".
func Open(path string, flags int, mode uint32) (int, error) {
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Open(path, flags|unix.O_CLOEXEC, mode)
		return err
	})
	if err != nil {
		return -1, os.NewSyscallError("open "+path, err)
	}
	return fd, nil
}

// Stat stats path, following symlinks, retrying EINTR (which a FUSE file
// system can return) as os.Stat does. Errors name the path: "stat PATH".
func Stat(path string, st *unix.Stat_t) error {
	if err := ignoringEINTR(func() error { return unix.Stat(path, st) }); err != nil {
		return os.NewSyscallError("stat "+path, err)
	}
	return nil
}

// Fstat stats the file open at fd, retrying EINTR as Stat does.
func Fstat(fd int, st *unix.Stat_t) error {
	if err := ignoringEINTR(func() error { return unix.Fstat(fd, st) }); err != nil {
		return os.NewSyscallError("fstat", err)
	}
	return nil
}

// Read reads from fd into b (read(2)), retrying EINTR.
func Read(fd int, b []byte) (int, error) {
	var n int
	err := ignoringEINTR(func() (err error) {
		n, err = unix.Read(fd, b)
		return err
	})
	if err != nil {
		return n, os.NewSyscallError("read", err)
	}
	return n, nil
}

// Write writes b to fd (write(2), which may write less than all of b),
// retrying EINTR.
func Write(fd int, b []byte) (int, error) {
	var n int
	err := ignoringEINTR(func() (err error) {
		n, err = unix.Write(fd, b)
		return err
	})
	if err != nil {
		return n, os.NewSyscallError("write", err)
	}
	return n, nil
}

// FcntlGetFD returns the fd flags of fd (fcntl F_GETFD): FD_CLOEXEC or 0.
// It fails with EBADF when fd is not open.
func FcntlGetFD(fd int) (int, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return -1, os.NewSyscallError("fcntl F_GETFD", err)
	}
	return fl, nil
}

// Poll waits up to timeout milliseconds (-1: no limit) for events on fds
// (poll(2), as ppoll) and returns how many fds have some. A signal makes
// poll fail with EINTR whatever SA_RESTART says; Poll then waits again
// for the time that is left.
func Poll(fds []unix.PollFd, timeout int) (int, error) {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(time.Duration(timeout) * time.Millisecond)
	}
	for {
		n, err := unix.Poll(fds, timeout)
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				return 0, os.NewSyscallError("poll", err)
			}
			return n, nil
		}
		if timeout > 0 {
			left := time.Until(deadline)
			timeout = int(max((left+time.Millisecond-1)/time.Millisecond, 0))
		}
	}
}

// Eventfd creates an eventfd with counter initval and flags (EFD_CLOEXEC
// is added).
func Eventfd(initval uint, flags int) (int, error) {
	fd, err := unix.Eventfd(initval, flags|unix.EFD_CLOEXEC)
	if err != nil {
		return -1, os.NewSyscallError("eventfd", err)
	}
	return fd, nil
}

// InotifyInit1 creates an inotify instance with flags (IN_CLOEXEC is
// added).
func InotifyInit1(flags int) (int, error) {
	fd, err := unix.InotifyInit1(flags | unix.IN_CLOEXEC)
	if err != nil {
		return -1, os.NewSyscallError("inotify_init1", err)
	}
	return fd, nil
}

// InotifyAddWatch adds or changes the watch for mask on path to the
// inotify instance fd and returns its watch descriptor (the same one for
// the same inode). Errors name the path: "inotify_add_watch PATH".
func InotifyAddWatch(fd int, path string, mask uint32) (int, error) {
	wd, err := unix.InotifyAddWatch(fd, path, mask)
	if err != nil {
		return -1, os.NewSyscallError("inotify_add_watch "+path, err)
	}
	return wd, nil
}

// InotifyRmWatch removes watch wd from the inotify instance fd; EINVAL
// means there is no such watch (any more).
func InotifyRmWatch(fd int, wd uint32) error {
	if _, err := unix.InotifyRmWatch(fd, wd); err != nil {
		return os.NewSyscallError("inotify_rm_watch", err)
	}
	return nil
}

// Pread reads from fd at off (pread(2)), retrying EINTR.
func Pread(fd int, b []byte, off int64) (int, error) {
	var n int
	err := ignoringEINTR(func() (err error) {
		n, err = unix.Pread(fd, b, off)
		return err
	})
	if err != nil {
		return n, os.NewSyscallError("pread", err)
	}
	return n, nil
}

// Pwrite writes b to fd at off (pwrite(2), which may write less than all
// of b), retrying EINTR.
func Pwrite(fd int, b []byte, off int64) (int, error) {
	var n int
	err := ignoringEINTR(func() (err error) {
		n, err = unix.Pwrite(fd, b, off)
		return err
	})
	if err != nil {
		return n, os.NewSyscallError("pwrite", err)
	}
	return n, nil
}

// AddSeals adds seals to a memfd (fcntl F_ADD_SEALS).
func AddSeals(fd, seals int) error {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return os.NewSyscallError("fcntl F_ADD_SEALS", err)
	}
	return nil
}

// Seals returns the seals of a memfd (fcntl F_GET_SEALS).
func Seals(fd int) (int, error) {
	s, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return 0, os.NewSyscallError("fcntl F_GET_SEALS", err)
	}
	return s, nil
}

// SetCloexec sets FD_CLOEXEC on fd (fcntl F_SETFD).
func SetCloexec(fd int) error {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return os.NewSyscallError("fcntl F_SETFD", err)
	}
	return nil
}

// Umask sets the process's file mode creation mask and returns the old one
// (umask(2), which cannot fail).
func Umask(mask int) int { return unix.Umask(mask) }
