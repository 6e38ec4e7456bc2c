package linux

import "sync/atomic"

// FD owns one file descriptor. Close closes it at most once, however often
// and from however many goroutines it is called; Release hands the number
// to a new owner, after which Close does nothing. The zero FD owns nothing,
// so an FD can be embedded in a struct and filled in with Own.
//
// An FD must not be copied after first use (it holds an atomic), which go
// vet checks.
type FD struct {
	n atomic.Int32 // the fd plus one; 0: nothing owned
}

// NewFD returns an FD owning n (nothing if n < 0).
func NewFD(n int) *FD {
	f := &FD{}
	f.Own(n)
	return f
}

// Own makes f the owner of n (nothing if n < 0). f must own nothing yet:
// taking a second fd would leak the first, so that panics.
func (f *FD) Own(n int) {
	if n < 0 {
		return
	}
	if !f.n.CompareAndSwap(0, int32(n)+1) {
		panic("linux.FD: Own of an FD that already owns an fd")
	}
}

// Int is the fd number for a system call that borrows it, or -1 when f
// owns nothing (closed or released). The caller must keep f open while it
// uses the number.
func (f *FD) Int() int { return int(f.n.Load()) - 1 }

// Valid reports whether f still owns an fd.
func (f *FD) Valid() bool { return f.n.Load() != 0 }

// Release gives up ownership and returns the number (-1 if f owned
// nothing): the caller is its owner now.
func (f *FD) Release() int { return int(f.n.Swap(0)) - 1 }

// Close closes the fd if f still owns one; later calls do nothing.
func (f *FD) Close() error {
	if n := f.Release(); n >= 0 {
		return Close(n)
	}
	return nil
}
