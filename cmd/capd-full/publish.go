package main

import (
	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/internal/cli"
)

func newPublishCmd() *cobra.Command {
	var p cli.Publish
	cmd := &cobra.Command{
		Use:   "publish NAME[=FD]... [--fd N] [--listen-fds] [--pin] [--ttl DURATION] [--allow PATTERN]... [--replace] [--per-consumer] [--restrict LIST] [-- COMMAND [ARG...]]",
		Short: "Store fds of the caller's under names, then optionally run COMMAND",
		Long: `Store a dup of an fd the caller passes to capd under NAME. The entry is owned
by the caller's identity (see 'capd whoami'); other identities can acquire it
as OWNER:NAME when the admin's policy grants it.

Which fd: NAME=FD names it; else --fd N; else stdin (fd 0), so that
'capd publish NAME < FILE' and a unit's StandardInput= work. Several NAMEs
publish several fds (each NAME=FD, or one NAME with --fd or stdin).
--listen-fds publishes the fds systemd passed to capd by socket activation
(LISTEN_FDS, with LISTEN_PID capd's own pid) under their names in
LISTEN_FDNAMES (the .socket's FileDescriptorName=); an fd systemd names
"unknown" or "stored", or a name capd cannot take, is an error.

With '-- COMMAND', capd then executes COMMAND in its place, with every fd
and the environment intact (LISTEN_* included, still meant for the same
pid), as s6-fdholder-store chain-loads: a unit publishes and runs its daemon
in one ExecStart= line. Nothing is executed when a publish fails.

NAME is 1 to 255 letters, digits and . _ - @ + =.
Publishing a name that is already live fails with exit code 6 (exists)
unless --replace is given, which swaps the new fd in atomically.

  --pin            keep the entry when the owner's cgroup empties
  --ttl DURATION   revoke the entry after DURATION (e.g. 30s, 10m): timed
                   authorization
  --allow PATTERN  only identities matching one of these patterns may
                   acquire it (narrows policy, never widens it); globs as in
                   policy: zincati.service, container:web-*, cgroup:/a/*

An unpinned entry lives while its owner's cgroup has processes: published
from a Type=oneshot unit, or any unit whose last process is capd itself, it
vanishes as soon as capd exits. Publish such entries with --pin (capd warns
when it sees that it is its unit's last process), or chain-load the daemon
with '-- COMMAND'.`,
		Example: `  # publish one end of a socketpair held on fd 3
  capd publish zincati-fd --fd 3
  # publish a file for ten minutes, only to zincati
  capd publish report --ttl 10m --allow zincati.service < report.txt
  # a unit publishes its socket-activated fds, then runs its daemon
  ExecStart=/usr/bin/capd publish --listen-fds --pin -- /usr/libexec/rpm-ostreed
  # two fds at once
  capd publish a=3 b=4 3<a.txt 4<b.txt`,
		Args: func(cmd *cobra.Command, args []string) error { return p.Args(args, cmd.ArgsLenAtDash()) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return p.Run(cmd.ErrOrStderr(), args, cmd.ArgsLenAtDash())
		},
	}
	p.Flags(cmd.Flags())
	return cmd
}
