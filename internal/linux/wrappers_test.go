package linux_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// syscallErr checks that err matches errno and is an *os.SyscallError
// naming want.
func syscallErr(t *testing.T, what string, err error, errno unix.Errno, want string) {
	t.Helper()
	var se *os.SyscallError
	switch {
	case !errors.Is(err, errno):
		t.Errorf("%s: %v, want an error matching %v", what, err, errno)
	case !errors.As(err, &se):
		t.Errorf("%s: %v (%T) is no *os.SyscallError", what, err, err)
	case se.Syscall != want:
		t.Errorf("%s: SyscallError names %q, want %q", what, se.Syscall, want)
	}
}

func cloexec(t *testing.T, what string, fd int) {
	t.Helper()
	fl, err := linux.FcntlGetFD(fd)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if fl&unix.FD_CLOEXEC == 0 {
		t.Errorf("%s: fd %d lacks FD_CLOEXEC", what, fd)
	}
}

// Failing wrappers keep the errno reachable with errors.Is and name their
// system call (and path, where they take one).
func TestWrapperErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	var st unix.Stat_t

	_, err := linux.Open(missing, unix.O_RDONLY, 0)
	syscallErr(t, "Open", err, unix.ENOENT, "open "+missing)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open: %v, want an error matching os.ErrNotExist", err)
	}
	syscallErr(t, "Stat", linux.Stat(missing, &st), unix.ENOENT, "stat "+missing)
	syscallErr(t, "Fstat", linux.Fstat(-1, &st), unix.EBADF, "fstat")
	_, err = linux.Read(-1, make([]byte, 1))
	syscallErr(t, "Read", err, unix.EBADF, "read")
	_, err = linux.Write(-1, []byte{1})
	syscallErr(t, "Write", err, unix.EBADF, "write")
	_, err = linux.FcntlGetFD(-1)
	syscallErr(t, "FcntlGetFD", err, unix.EBADF, "fcntl F_GETFD")

	_, err = linux.Socket(-1, unix.SOCK_STREAM, 0)
	syscallErr(t, "Socket", err, unix.EAFNOSUPPORT, "socket")
	tv := unix.NsecToTimeval(int64(time.Second))
	syscallErr(t, "SetsockoptTimeval", linux.SetsockoptTimeval(-1, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv), unix.EBADF, "setsockopt SO_RCVTIMEO")
	syscallErr(t, "SetsockoptTimeval", linux.SetsockoptTimeval(-1, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv), unix.EBADF, "setsockopt SO_SNDTIMEO")
	syscallErr(t, "SetsockoptInt", linux.SetsockoptInt(-1, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1), unix.EBADF, "setsockopt SO_REUSEADDR")
	_, err = linux.Getsockname(-1)
	syscallErr(t, "Getsockname", err, unix.EBADF, "getsockname")
	_, err = linux.Send(-1, []byte{1})
	syscallErr(t, "Send", err, unix.EBADF, "sendmsg")

	sock, err := linux.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(sock)
	// The client and tests/faultgen tell an unreachable agent by this
	// error's Syscall, "connect".
	syscallErr(t, "Connect", linux.Connect(sock, &unix.SockaddrUnix{Name: missing}), unix.ENOENT, "connect")

	_, err = linux.Eventfd(0, -1)
	syscallErr(t, "Eventfd", err, unix.EINVAL, "eventfd")
	_, err = linux.InotifyInit1(-1)
	syscallErr(t, "InotifyInit1", err, unix.EINVAL, "inotify_init1")
	in, err := linux.InotifyInit1(unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(in)
	_, err = linux.InotifyAddWatch(in, missing, unix.IN_MODIFY)
	syscallErr(t, "InotifyAddWatch", err, unix.ENOENT, "inotify_add_watch "+missing)
	syscallErr(t, "InotifyRmWatch", linux.InotifyRmWatch(in, 12345), unix.EINVAL, "inotify_rm_watch")
	_, err = linux.Read(in, make([]byte, 4096))
	syscallErr(t, "Read of an idle non-blocking inotify fd", err, unix.EAGAIN, "read")

	syscallErr(t, "Setns", linux.Setns(-1, unix.CLONE_NEWNS), unix.EBADF, "setns")
	syscallErr(t, "Execve", linux.Execve(missing, []string{missing}, nil), unix.ENOENT, "execve "+missing)

	// A multi-threaded process cannot unshare its user namespace or its
	// memory. Were one to succeed, its thread would stay locked and die
	// with the goroutine.
	for _, tc := range []struct {
		flags int
		name  string
	}{
		{unix.CLONE_NEWUSER, "unshare CLONE_NEWUSER"},
		{unix.CLONE_NEWUSER | unix.CLONE_VM, "unshare CLONE_NEWUSER|0x100"},
	} {
		done := make(chan error)
		go func() {
			runtime.LockOSThread()
			done <- linux.Unshare(tc.flags)
		}()
		syscallErr(t, "Unshare", <-done, unix.EINVAL, tc.name)
	}
}

// Every fd a wrapper creates carries FD_CLOEXEC, asked for or not; an
// eventfd counts what Write adds and Read drains.
func TestWrappersCloexec(t *testing.T) {
	dir := t.TempDir()
	fd, err := linux.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cloexec(t, "Open", fd)
	var a, b unix.Stat_t
	if err := linux.Fstat(fd, &a); err != nil {
		t.Fatal(err)
	}
	if err := linux.Stat(dir, &b); err != nil {
		t.Fatal(err)
	}
	if a.Dev != b.Dev || a.Ino != b.Ino {
		t.Errorf("Fstat and Stat of %s disagree: %d:%d, %d:%d", dir, a.Dev, a.Ino, b.Dev, b.Ino)
	}
	linux.Close(fd)

	sock, err := linux.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	cloexec(t, "Socket", sock)
	tv := unix.NsecToTimeval(int64(1500 * time.Millisecond))
	if err := linux.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	if got, err := unix.GetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_SNDTIMEO); err != nil || *got != tv {
		t.Errorf("SO_SNDTIMEO = %v, %v, want %v", got, err, tv)
	}
	linux.Close(sock)

	in, err := linux.InotifyInit1(0)
	if err != nil {
		t.Fatal(err)
	}
	cloexec(t, "InotifyInit1", in)
	wd, err := linux.InotifyAddWatch(in, dir, unix.IN_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	if err := linux.InotifyRmWatch(in, uint32(wd)); err != nil {
		t.Error(err)
	}
	linux.Close(in)

	ev, err := linux.Eventfd(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(ev)
	cloexec(t, "Eventfd", ev)
	var one, got [8]byte
	one[0] = 1
	if n, err := linux.Write(ev, one[:]); n != 8 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if n, err := linux.Read(ev, got[:]); n != 8 || err != nil || got[0] != 3 {
		t.Fatalf("Read = %d, %v, counter %d; want 8, nil, 3", n, err, got[0])
	}
}

// onThread runs call on a goroutine locked to its own OS thread.
type onThread struct {
	tid  int
	done chan error
}

func runOnThread(call func() error) *onThread {
	o := &onThread{done: make(chan error, 1)}
	tid := make(chan int)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		o.done <- call()
	}()
	o.tid = <-tid
	return o
}

// sleepingIn waits until the thread sleeps in system call nr.
func (o *onThread) sleepingIn(t *testing.T, nr int) {
	t.Helper()
	p := "/proc/self/task/" + strconv.Itoa(o.tid) + "/syscall"
	want := strconv.Itoa(nr) + " "
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		select {
		case err := <-o.done:
			t.Fatalf("returned (%v) before sleeping in system call %d", err, nr)
		default:
		}
		if b, err := os.ReadFile(p); err == nil && strings.HasPrefix(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d never slept in system call %d", o.tid, nr)
		}
	}
}

// interrupt sends the thread SIGURG, which the Go runtime handles (it is
// its preemption signal) and otherwise ignores: a system call the kernel
// does not restart fails with EINTR.
func (o *onThread) interrupt(t *testing.T) {
	t.Helper()
	if err := unix.Tgkill(os.Getpid(), o.tid, unix.SIGURG); err != nil {
		t.Fatal(err)
	}
}

// result waits for the call to return.
func (o *onThread) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-o.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not return")
		return nil
	}
}

// stillRunning checks that the call has not returned for a while.
func (o *onThread) stillRunning(t *testing.T) {
	t.Helper()
	select {
	case err := <-o.done:
		t.Fatalf("the interrupted call returned: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
}

// A signal makes poll fail with EINTR (the kernel never restarts it);
// Poll waits on until an fd is ready.
func TestPollRetriesEINTR(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer linux.Close(p[0])
	defer linux.Close(p[1])
	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}

	// Control: the raw system call sees the EINTR.
	raw := runOnThread(func() error { _, err := unix.Poll(fds, -1); return err })
	raw.sleepingIn(t, unix.SYS_PPOLL)
	raw.interrupt(t)
	if err := raw.result(t); !errors.Is(err, unix.EINTR) {
		t.Fatalf("raw poll interrupted: %v, want EINTR", err)
	}

	var n int
	o := runOnThread(func() (err error) { n, err = linux.Poll(fds, -1); return err })
	for range 3 {
		o.sleepingIn(t, unix.SYS_PPOLL)
		o.interrupt(t)
		o.stillRunning(t)
	}
	if _, err := unix.Write(p[1], []byte{1}); err != nil {
		t.Fatal(err)
	}
	if err := o.result(t); err != nil || n != 1 {
		t.Fatalf("Poll = %d, %v; want 1, nil", n, err)
	}
}

// An interrupted Poll with a timeout waits only for the time left.
func TestPollTimeoutAcrossEINTR(t *testing.T) {
	const timeout = time.Second
	start := time.Now()
	var n int
	o := runOnThread(func() (err error) { n, err = linux.Poll(nil, int(timeout/time.Millisecond)); return err })
	o.sleepingIn(t, unix.SYS_PPOLL)
	time.Sleep(timeout / 2)
	o.interrupt(t)
	err := o.result(t)
	took := time.Since(start)
	if err != nil || n != 0 {
		t.Fatalf("Poll = %d, %v; want 0, nil", n, err)
	}
	if took < timeout || took > timeout*7/5 {
		t.Errorf("Poll(%v) interrupted halfway took %v", timeout, took)
	}
}

// A connect that waits for room in a full AF_UNIX backlog fails with EINTR
// on a signal when the socket has a send timeout (the client arms one);
// Connect tries again and connects once there is room.
func TestConnectRetriesEINTR(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	l, err := linux.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(l)
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 0); err != nil { // room for one pending connection
		t.Fatal(err)
	}
	sa := &unix.SockaddrUnix{Name: path}
	timed := func() int {
		fd, err := linux.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
		if err != nil {
			t.Fatal(err)
		}
		tv := unix.NsecToTimeval(int64(30 * time.Second))
		if err := linux.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	first := timed()
	defer linux.Close(first)
	if err := linux.Connect(first, sa); err != nil {
		t.Fatal(err)
	}

	// Control: the raw system call sees the EINTR.
	fd := timed()
	raw := runOnThread(func() error { return unix.Connect(fd, sa) })
	raw.sleepingIn(t, unix.SYS_CONNECT)
	raw.interrupt(t)
	err = raw.result(t)
	linux.Close(fd)
	if !errors.Is(err, unix.EINTR) {
		t.Fatalf("raw connect interrupted: %v, want EINTR", err)
	}

	fd = timed()
	defer linux.Close(fd)
	o := runOnThread(func() error { return linux.Connect(fd, sa) })
	for range 3 {
		o.sleepingIn(t, unix.SYS_CONNECT)
		o.interrupt(t)
		o.stillRunning(t)
	}
	// Accepting the first connection makes room for the second.
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(a)
	if err := o.result(t); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if _, err := unix.Getpeername(fd); err != nil {
		t.Errorf("Connect returned, but the socket is not connected: %v", err)
	}
}

// PidfdGetInfo reports the process behind a pidfd, and keeps the errno of
// a failed ioctl reachable.
func TestPidfdGetInfo(t *testing.T) {
	pidfd, err := linux.PidfdOpen(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(pidfd)
	info, err := linux.PidfdGetInfo(pidfd, unix.PIDFD_INFO_CREDS|unix.PIDFD_INFO_CGROUPID)
	if err != nil {
		t.Fatal(err)
	}
	if int(info.Pid) != os.Getpid() || int(info.Ruid) != os.Getuid() || info.Mask&unix.PIDFD_INFO_CREDS == 0 {
		t.Errorf("PidfdGetInfo = pid %d ruid %d mask %#x; want pid %d ruid %d with PIDFD_INFO_CREDS", info.Pid, info.Ruid, info.Mask, os.Getpid(), os.Getuid())
	}
	ev, err := linux.Eventfd(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(ev)
	_, err = linux.PidfdGetInfo(ev, unix.PIDFD_INFO_CREDS)
	syscallErr(t, "PidfdGetInfo of an eventfd", err, unix.ENOTTY, "ioctl PIDFD_GET_INFO")
}

// Send to a peer that went away fails with EPIPE instead of raising
// SIGPIPE.
func TestSendNoSigpipe(t *testing.T) {
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Close(p[0])
	if n, err := linux.Send(p[0], []byte("ab")); n != 2 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	linux.Close(p[1])
	_, err = linux.Send(p[0], []byte("x"))
	syscallErr(t, "Send to a closed peer", err, unix.EPIPE, "sendmsg")
}
