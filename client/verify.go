package client

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// Verify reports whether a and b refer to the same open file description:
// true for a dup, for an fd passed over SCM_RIGHTS, or for one acquired from
// the agent; false for the same file opened again (also via /proc/self/fd)
// and for any other file. It asks the kernel, with F_DUPFD_QUERY (Linux >=
// 6.10) or else kcmp(2) KCMP_FILE, and never compares inodes. When neither
// is available it returns an error wrapping ErrVerifyUnsupported, not false.
func Verify(a, b *os.File) (bool, error) {
	if a == nil || b == nil {
		return false, errors.New("verify: nil file")
	}
	ra, err := a.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("verify: %w", err)
	}
	rb, err := b.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("verify: %w", err)
	}
	var same bool
	var verr error
	err = ra.Control(func(fa uintptr) {
		err := rb.Control(func(fb uintptr) {
			same, verr = verifyFDs(int(fa), int(fb))
		})
		if err != nil {
			verr = err
		}
	})
	if err == nil {
		err = verr
	}
	if err != nil {
		return false, fmt.Errorf("verify: %w", err)
	}
	return same, nil
}

func verifyFDs(a, b int) (bool, error) {
	same, err := linux.SameDescription(a, b)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		return false, fmt.Errorf("%w: %w", ErrVerifyUnsupported, err)
	}
	return same, err
}

// Harden makes the calling process non-dumpable (PR_SET_DUMPABLE 0): other
// processes of its uid can then no longer ptrace it, pidfd_getfd its fds or
// open /proc/PID/fd; only CAP_SYS_PTRACE can. A consumer started by `capd
// acquire` calls it first thing: the flag does not survive execve, so capd
// cannot set it for the consumer. Core dumps are disabled too.
func Harden() error {
	return linux.SetNonDumpable()
}
