package linux_test

import (
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// An FD closes its fd exactly once however many goroutines close it, and a
// released fd is the new owner's: Close then leaves it open.
func TestFDClosesOnce(t *testing.T) {
	n, err := linux.MemfdCreate("capd-test")
	if err != nil {
		t.Fatal(err)
	}
	f := linux.NewFD(n)
	if !f.Valid() || f.Int() != n {
		t.Fatalf("NewFD(%d): Int %d, Valid %v", n, f.Int(), f.Valid())
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); f.Close() }()
	}
	wg.Wait()
	if f.Valid() || f.Int() != -1 {
		t.Fatalf("after Close: Int %d, Valid %v", f.Int(), f.Valid())
	}
	if _, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("fd %d after Close: %v, want EBADF", n, err)
	}

	n, err = linux.MemfdCreate("capd-test")
	if err != nil {
		t.Fatal(err)
	}
	var g linux.FD // the zero FD owns nothing
	if g.Valid() || g.Close() != nil || g.Release() != -1 {
		t.Fatal("the zero FD owns something")
	}
	g.Own(n)
	if got := g.Release(); got != n {
		t.Fatalf("Release = %d, want %d", got, n)
	}
	g.Close()
	if _, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); err != nil {
		t.Fatalf("a released fd was closed: %v", err)
	}
	linux.Close(n)
}

// Own refuses to take a second fd: the first would leak.
func TestFDOwnTwicePanics(t *testing.T) {
	n, err := linux.MemfdCreate("capd-test")
	if err != nil {
		t.Fatal(err)
	}
	f := linux.NewFD(n)
	defer f.Close()
	defer func() {
		if recover() == nil {
			t.Fatal("Own of an owning FD did not panic")
		}
	}()
	f.Own(n)
}
