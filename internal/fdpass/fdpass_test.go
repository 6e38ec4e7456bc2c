package fdpass

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

func pair(t *testing.T) (int, int) {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(sp[0]); unix.Close(sp[1]) })
	return sp[0], sp[1]
}

func TestSendRecv(t *testing.T) {
	a, b := pair(t)
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	if err := Send(a, []byte("hi"), int(r.Fd())); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, fds, err := Recv(b, buf, make([]byte, OOBSize(4)), nil, 1)
	if err != nil || n != 2 || len(fds) != 1 {
		t.Fatalf("Recv = %d %v %v", n, fds, err)
	}
	defer unix.Close(fds[0])
	if fl, _ := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
		t.Fatal("received fd lacks CLOEXEC")
	}
}

func TestRecvRejectsAndCloses(t *testing.T) {
	a, b := pair(t)
	f, _ := os.Open("/dev/null")
	defer f.Close()
	before := len(testutil.FDs())
	fd := int(f.Fd())
	buf := make([]byte, 4)

	Send(a, []byte("x"), fd, fd, fd)
	if _, _, err := Recv(b, buf, make([]byte, OOBSize(8)), nil, 1); !errors.Is(err, ErrTooManyFDs) {
		t.Errorf("3 fds, max 1: %v", err)
	}
	Send(a, []byte("x"), fd, fd, fd, fd, fd, fd)
	if _, _, err := Recv(b, buf, make([]byte, OOBSize(2)), nil, 1); !errors.Is(err, ErrControlTruncated) {
		t.Errorf("6 fds into room for 2: %v", err)
	}
	Send(a, []byte("too long"), fd)
	if _, _, err := Recv(b, buf, make([]byte, OOBSize(2)), nil, 1); !errors.Is(err, ErrTruncated) {
		t.Errorf("8 bytes into 4: %v", err)
	}
	if after := len(testutil.FDs()); after != before {
		t.Fatalf("fds: %d before, %d after: rejected messages leaked fds", before, after)
	}
}
