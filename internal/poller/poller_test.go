package poller_test

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/poller"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

// Wait returns when the fd is readable, ErrStopped once stopped (a waiter
// blocked at the time too, and every later one), and an error when the fd
// fails.
func TestPoller(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer linux.Close(p[0])
	pl, err := poller.New()
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	done := make(chan error)
	go func() { done <- pl.Wait(p[0]) }()
	linux.Write(p[1], []byte("x"))
	if err := <-done; err != nil {
		t.Fatalf("readable: %v", err)
	}
	var b [1]byte
	linux.Read(p[0], b[:])

	go func() { done <- pl.Wait(p[0]) }()
	pl.Stop()
	if err := <-done; !errors.Is(err, poller.ErrStopped) {
		t.Fatalf("stopped while waiting: %v", err)
	}
	if err := pl.Wait(p[0]); !errors.Is(err, poller.ErrStopped) {
		t.Fatalf("after Stop: %v", err)
	}

	linux.Close(p[1]) // the read end now reports POLLHUP
	q, err := poller.New()
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Wait(p[0]); err == nil || errors.Is(err, poller.ErrStopped) {
		t.Fatalf("hung-up fd: %v", err)
	}
}
