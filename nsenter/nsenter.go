// Package nsenter runs Go code inside another process's mount namespace,
// entered through a pidfd (or a mount namespace's own fd: setns takes
// either).
//
// A Go program is multi-threaded, and setns(CLONE_NEWNS) refuses a thread
// that shares its filesystem context (root, cwd) with others. MountNS
// therefore runs the function on a fresh goroutine locked to its OS thread,
// which first unshares CLONE_FS and then joins the namespace; the thread is
// never unlocked, so when the goroutine returns the Go runtime ends the
// thread instead of reusing it in a foreign namespace. User namespaces
// cannot be joined this way at all (the kernel refuses multi-threaded
// callers); that needs a re-executed helper.
//
// Fd ownership: the package opens and closes nothing of the caller's; the
// pidfd (or namespace fd) stays the caller's.
package nsenter

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// MountNS runs fn in the mount namespace of the process behind pidfd (or
// the mount namespace pidfd is a namespace fd of) and returns its error. fn runs on a thread of its own, which dies with it: it
// must not start goroutines that expect to stay in the namespace, and
// anything it opens by path resolves in the target's namespace (fds opened
// earlier keep pointing where they pointed).
func MountNS(pidfd int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread leaves with the goroutine.
		if err := linux.Unshare(unix.CLONE_FS); err != nil {
			done <- err
			return
		}
		if err := linux.Setns(pidfd, unix.CLONE_NEWNS); err != nil {
			done <- fmt.Errorf("enter mount namespace: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}
