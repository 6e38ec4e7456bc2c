package procfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrNoFileID reports an fdinfo without the mnt_id and ino lines, which
// every kernel capd supports writes.
var ErrNoFileID = errors.New("fdinfo has no mnt_id and ino")

// ignoringEINTR calls fn until it returns something other than EINTR.
func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func openat(dir int, name string, flags int) (int, error) {
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Openat(dir, name, flags|unix.O_CLOEXEC, 0)
		return err
	})
	return fd, err
}

// Dir is an open /proc/PID directory; the zero value is not usable.
type Dir struct{ fd int }

// Open opens /proc/PID. The caller closes the Dir.
func Open(pid int) (Dir, error) {
	p := "/proc/" + strconv.Itoa(pid)
	fd, err := openat(unix.AT_FDCWD, p, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return Dir{-1}, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return Dir{fd}, nil
}

// Close closes the directory fd.
func (d Dir) Close() error {
	if err := unix.Close(d.fd); err != nil && !errors.Is(err, unix.EINTR) {
		return os.NewSyscallError("close", err)
	}
	return nil
}

// FDTable is an open /proc/PID/fd directory of the process a Dir is
// bound to, and bound to it the same way. Reading links through it spares
// the path walk one lookup per fd. The zero value is not usable.
type FDTable struct{ fd int }

// FDTable opens the process's fd directory. The caller closes it.
func (d Dir) FDTable() (FDTable, error) {
	fd, err := openat(d.fd, "fd", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return FDTable{-1}, &os.PathError{Op: "openat", Path: "fd", Err: err}
	}
	return FDTable{fd}, nil
}

// Close closes the directory fd.
func (t FDTable) Close() error {
	if err := unix.Close(t.fd); err != nil && !errors.Is(err, unix.EINTR) {
		return os.NewSyscallError("close", err)
	}
	return nil
}

// List appends the process's open fd numbers to fds. It reads the
// directory from where the last List stopped to its end, so call it once.
// buf is scratch space for getdents64 (at least 1 KiB; nil allocates one).
func (t FDTable) List(fds []int, buf []byte) ([]int, error) {
	return appendNumbers(t.fd, fds, buf)
}

// PIDs appends the pids /proc lists (thread group leaders) to pids. buf is
// as for FDs.
func PIDs(pids []int, buf []byte) ([]int, error) {
	fd, err := openat(unix.AT_FDCWD, "/proc", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return pids, &os.PathError{Op: "open", Path: "/proc", Err: err}
	}
	defer unix.Close(fd)
	return appendNumbers(fd, pids, buf)
}

// appendNumbers appends the names of directory dir that are decimal
// numbers.
func appendNumbers(dir int, out []int, buf []byte) ([]int, error) {
	if len(buf) < 1024 {
		buf = make([]byte, 8192)
	}
	for {
		var n int
		err := ignoringEINTR(func() (err error) {
			n, err = unix.Getdents(dir, buf)
			return err
		})
		if err != nil {
			return out, os.NewSyscallError("getdents64", err)
		}
		if n <= 0 {
			return out, nil
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		const nameOff = 19
		for off := 0; off+nameOff <= n; {
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen <= nameOff || off+reclen > n {
				return out, fmt.Errorf("getdents64: malformed record at %d", off)
			}
			name := buf[off+nameOff : off+reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if v, ok := atoi(name); ok {
				out = append(out, v)
			}
			off += reclen
		}
	}
}

// atoi parses a non-negative decimal number that fits an int.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	v := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}

// entryName returns dir + "/" + the decimal fd, e.g. "fd/3".
func entryName(dir string, fd int) string {
	var b [32]byte
	return string(strconv.AppendInt(append(append(b[:0], dir...), '/'), int64(fd), 10))
}

// Link reads the target of /proc/PID/fd/FD into buf (4 KiB holds any path)
// and returns it; a target longer than buf comes back cut to its length.
// The kernel builds it with d_path or the pseudo file system's d_dname:
// nothing asks the file's file system. Some kernels (the 6.18 of the
// project's test machine) take the process's exec_update_lock for it, so
// it waits while the process is in execve (killable only by a fatal
// signal).
func (t FDTable) Link(fd int, buf []byte) ([]byte, error) {
	var name [20]byte
	var n int
	err := ignoringEINTR(func() (err error) {
		n, err = unix.Readlinkat(t.fd, string(strconv.AppendInt(name[:0], int64(fd), 10)), buf)
		return err
	})
	if err != nil {
		return nil, os.NewSyscallError("readlinkat", err)
	}
	return buf[:n], nil
}

// FDInfo is the start of /proc/PID/fdinfo/FD: what the kernel knows of the
// open file description without asking its file system.
type FDInfo struct {
	Pos   int64
	Flags uint32 // the open flags, O_CLOEXEC of this fd included
	MntID int    // the mount the file was opened through (its mount id)
	Ino   uint64 // the inode number
}

// FDInfo reads /proc/PID/fdinfo/FD with one read into buf (256 bytes hold
// the fields FDInfo has). Do not call it for fds whose link is an
// anonymous inode other than a pidfd (see the package doc).
func (d Dir) FDInfo(fd int, buf []byte) (FDInfo, error) {
	b, err := d.ReadHead(entryName("fdinfo", fd), buf)
	if err != nil {
		return FDInfo{}, err
	}
	return parseFDInfo(b)
}

func parseFDInfo(b []byte) (FDInfo, error) {
	var fi FDInfo
	var seen int
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		var err error
		switch string(k) {
		case "pos":
			fi.Pos, err = strconv.ParseInt(string(v), 10, 64)
		case "flags":
			var f uint64
			f, err = strconv.ParseUint(string(v), 8, 32)
			fi.Flags = uint32(f)
		case "mnt_id":
			fi.MntID, err = strconv.Atoi(string(v))
			seen |= 1
		case "ino":
			fi.Ino, err = strconv.ParseUint(string(v), 10, 64)
			seen |= 2
		}
		if err != nil {
			return FDInfo{}, fmt.Errorf("fdinfo %s: %w", k, err)
		}
		if seen == 3 {
			return fi, nil
		}
	}
	return FDInfo{}, ErrNoFileID
}

// ReadHead reads the start of the file name below the directory (e.g.
// "status") with one read(2) into buf and returns what it read: procfs
// returns as much of a small file as buf holds.
func (d Dir) ReadHead(name string, buf []byte) ([]byte, error) {
	fd, err := openat(d.fd, name, unix.O_RDONLY)
	if err != nil {
		return nil, &os.PathError{Op: "openat", Path: name, Err: err}
	}
	defer unix.Close(fd)
	var n int
	err = ignoringEINTR(func() (err error) {
		n, err = unix.Read(fd, buf)
		return err
	})
	if err != nil {
		return nil, &os.PathError{Op: "read", Path: name, Err: err}
	}
	return buf[:n], nil
}

// ReadFile reads the whole file name below the directory (e.g.
// "mountinfo") into buf[:0], growing it, and returns the content.
func (d Dir) ReadFile(name string, buf []byte) ([]byte, error) {
	fd, err := openat(d.fd, name, unix.O_RDONLY)
	if err != nil {
		return nil, &os.PathError{Op: "openat", Path: name, Err: err}
	}
	defer unix.Close(fd)
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, max(4096, cap(buf)))...)[:len(buf)]
		}
		var n int
		err = ignoringEINTR(func() (err error) {
			n, err = unix.Read(fd, buf[len(buf):cap(buf)])
			return err
		})
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: name, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// Readlink returns the target of the link name below the directory (e.g.
// "ns/mnt").
func (d Dir) Readlink(name string) (string, error) {
	var buf [128]byte
	var n int
	err := ignoringEINTR(func() (err error) {
		n, err = unix.Readlinkat(d.fd, name, buf[:])
		return err
	})
	if err != nil {
		return "", &os.PathError{Op: "readlinkat", Path: name, Err: err}
	}
	return string(buf[:n]), nil
}

// Owner returns the uid owning /proc/PID, which Linux sets to root while
// the process is not dumpable.
func (d Dir) Owner() (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return 0, os.NewSyscallError("fstat", err)
	}
	return st.Uid, nil
}

// Alive reports whether the process has not been reaped yet (a zombie
// counts as alive), by pidfd_send_signal of signal 0 through the directory,
// which the kernel takes as a pidfd of the process. A false result is
// final: a Dir never refers to a recycled pid. Without the right to signal
// the process it fails with EPERM.
func (d Dir) Alive() (bool, error) {
	err := unix.PidfdSendSignal(d.fd, 0, nil, 0)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ESRCH):
		return false, nil
	default:
		return false, os.NewSyscallError("pidfd_send_signal", err)
	}
}

// Kind says what a /proc/PID/fd/N link names.
type Kind uint8

const (
	// Path is a file named by a path in some mount ("/etc/passwd",
	// "/memfd:x (deleted)", "/dev/null"): any file system, user-space ones
	// (FUSE) included. FDInfo tells it by mount id and inode.
	Path Kind = iota + 1
	// Pseudo is "TYPE:[INODE]": an inode of sockfs ("socket"), pipefs
	// ("pipe") or nsfs ("net", "mnt", ...), named by the link itself.
	Pseudo
	// Pidfd is "anon_inode:[pidfd]". On pidfs (Linux >= 6.9) every process
	// has an inode of its own, which FDInfo tells; pidfd's show_fdinfo
	// takes no lock.
	Pidfd
	// Anon is any other "anon_inode:..." link (eventfd, eventpoll, timerfd,
	// signalfd, inotify, io_uring, bpf, ...): the one inode these files
	// share, so the link's name is all that tells them apart. Never read
	// their fdinfo: eventpoll's show_fdinfo can wait (see the package doc).
	Anon
	// Other is a link of no shape this package knows.
	Other
)

// Classify returns the kind of link, and for Pseudo links the type and the
// inode number (typ aliases link).
func Classify(link []byte) (kind Kind, typ []byte, ino uint64) {
	switch {
	case len(link) > 0 && link[0] == '/':
		return Path, nil, 0
	case bytes.Equal(link, []byte("anon_inode:[pidfd]")):
		return Pidfd, nil, 0
	case bytes.HasPrefix(link, []byte("anon_inode:")):
		return Anon, nil, 0
	}
	if t, rest, ok := bytes.Cut(link, []byte(":[")); ok && len(t) > 0 && len(rest) > 1 && rest[len(rest)-1] == ']' {
		if n, err := strconv.ParseUint(string(rest[:len(rest)-1]), 10, 64); err == nil {
			return Pseudo, t, n
		}
	}
	return Other, nil, 0
}
