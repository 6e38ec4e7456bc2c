package main

import (
	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/internal/cli"
)

func newAcquireCmd() *cobra.Command {
	var a cli.Acquire
	cmd := &cobra.Command{
		Use:   "acquire [--optional] [--wait[=TIMEOUT]] [--verbose] OWNER:NAME... -- COMMAND [ARG...]",
		Short: "Run COMMAND with acquired fds, socket-activation style",
		Long: `Acquire each OWNER:NAME from the agent and execute COMMAND in place of capd
with the fds at 3, 4, ... in the order given, and the environment of the
systemd socket-activation protocol:

  LISTEN_FDS=<number of fds>
  LISTEN_FDNAMES=<the entry NAMEs, ':'-separated, in order>
  LISTEN_PID=<the pid, which COMMAND keeps>

so any sd_listen_fds_with_names() program consumes them unchanged.

Fds that capd itself received by socket activation (LISTEN_PID is capd's
own pid, as when a unit with its own .socket runs ExecStart=capd acquire
...) are kept: they come first, at 3, 4, ..., with their names from
LISTEN_FDNAMES ("unknown" where it names none), and the acquired fds follow.
No other fd above 2 that capd inherited reaches COMMAND, and LISTEN_*
variables meant for another process are replaced.

An entry that is absent (not-found) or not granted (permission-denied) makes
capd fail before COMMAND runs, naming the entry and the reason. With
--optional such entries are skipped with a warning and the rest delivered;
with no fd left, LISTEN_* are unset.

--wait waits for entries that are not published yet (the agent answers the
moment the publisher publishes; no polling), up to TIMEOUT (e.g. 30s; no
TIMEOUT: forever), then fails as not-found. Refusals by policy come at once.
It removes the need to order a consumer strictly after its publisher: a
unit with After=publisher.service and 'capd acquire --wait=1min X -- prog'
starts even while the publisher is still getting ready.

Exposure. Whoever may ptrace COMMAND can take its fds (pidfd_getfd) or
reopen /proc/PID/fd/N. What capd can set before exec and what survives it:
  - non-dumpable (PR_SET_DUMPABLE 0): reset by execve, so COMMAND must set
    it itself (client.Harden in Go) once it started;
  - --private-proc: COMMAND gets a mount namespace of its own with a /proc
    mounted hidepid=invisible (needs CAP_SYS_ADMIN; survives execve): what
    COMMAND and its children see is limited to their own uid's processes.
    It does not hide COMMAND from processes outside that namespace;
  - a uid of its own (setpriv, systemd's DynamicUser=): the strongest
    separation short of CAP_SYS_PTRACE, and it survives execve.
See docs/SECURITY.md and 'capd audit'.`,
		Example: `  capd acquire rpm-ostreed.service:zincati-fd -- zincati agent
  capd acquire --optional a.service:x b.service:y -- ./server`,
		Args: func(cmd *cobra.Command, args []string) error { return a.Args(args, cmd.ArgsLenAtDash()) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.Run(cmd.ErrOrStderr(), args, cmd.ArgsLenAtDash())
		},
	}
	a.Flags(cmd.Flags())
	return cmd
}
