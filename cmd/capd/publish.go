package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/proto"
)

func newPublishCmd() *cobra.Command {
	var (
		fd      int
		opts    client.PublishOptions
		ttl     time.Duration
		replace bool
	)
	cmd := &cobra.Command{
		Use:   "publish NAME --fd N [--pin] [--ttl DURATION] [--allow PATTERN]... [--replace]",
		Short: "Store one of the caller's fds under NAME",
		Long: `Store a dup of fd N, which the caller passes to capd, under NAME. The entry
is owned by the caller's identity (see 'capd whoami'); other identities can
acquire it as OWNER:NAME when the admin's policy grants it.

NAME is 1 to 255 letters, digits and . _ - @ + =.
Publishing a name that is already live fails with exit code 6 (exists)
unless --replace is given, which swaps the new fd in atomically.

  --pin            keep the entry when the owner's cgroup empties
  --ttl DURATION   revoke the entry after DURATION (e.g. 30s, 10m): timed
                   authorization
  --allow PATTERN  only identities matching one of these patterns may
                   acquire it (narrows policy, never widens it); globs as in
                   policy: zincati.service, container:web-*, cgroup:/a/*`,
		Example: `  # publish one end of a socketpair held on fd 3
  capd publish zincati-fd --fd 3
  # publish a file for ten minutes, only to zincati
  capd publish report --fd 3 --ttl 10m --allow zincati.service 3<report.txt`,
		Args: exactArgs(1, "exactly one NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := proto.ValidName(name); err != nil {
				return usageErr("%v", err)
			}
			if !cmd.Flags().Changed("fd") {
				return usageErr("--fd N is required: the fd to publish, e.g. 'capd publish %s --fd 3 3<file'", name)
			}
			if cmd.Flags().Changed("ttl") && ttl < time.Millisecond {
				return usageErr("--ttl must be at least 1ms, not %v", ttl)
			}
			f, err := inheritedFD(fd)
			if err != nil {
				return err
			}
			opts.TTL, opts.Replace = ttl, replace
			c, err := dial()
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Publish(name, f, &opts)
		},
	}
	cmd.Flags().IntVar(&fd, "fd", -1, "the fd to publish, as the caller passed it to capd")
	cmd.Flags().BoolVar(&opts.Pin, "pin", false, "keep the entry when the owner's cgroup empties")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "revoke the entry after this long (e.g. 30s)")
	cmd.Flags().StringArrayVar(&opts.Allow, "allow", nil, "identity pattern that may acquire the entry (repeatable)")
	cmd.Flags().BoolVar(&replace, "replace", false, "replace a live entry of the same name atomically")
	return cmd
}

// inheritedFD returns fd n if the caller passed it to capd. Fds that capd's
// own runtime opened carry FD_CLOEXEC, while an fd inherited across exec
// cannot: that tells a caller's fd from, say, the Go runtime's epoll fd.
func inheritedFD(n int) (*os.File, error) {
	if n < 0 {
		return nil, usageErr("--fd must be a file descriptor number, not %d", n)
	}
	flags, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC != 0 {
		return nil, usageErr("fd %d is not open in the caller (pass it to capd, e.g. '%d<file')", n, n)
	}
	return os.NewFile(uintptr(n), fmt.Sprintf("fd %d", n)), nil
}
