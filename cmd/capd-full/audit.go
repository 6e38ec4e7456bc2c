package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/cli"
)

func newAuditCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "audit [--json]",
		Short: "Show every process holding a copy of a capability, and its exposure (root)",
		Long: `For every store entry, list every process on the host that holds a copy of
the same open file description (compared by kcmp(2), not by name): pid,
identity, fd number, and whether the holder is exposed, that is whether a
process without CAP_SYS_PTRACE could take the fd from it (pidfd_getfd, or
reopening /proc/PID/fd/N): it is dumpable, its uid is not root, Yama's
ptrace_scope allows it, and whether its /proc hides processes (hidepid).

Entries that were revoked, expired or dropped recently (the last 1024) are
listed too when some process still holds their file: stale copies that
revocation could not take back (Linux cannot close another process's fd).

The agent walks /proc with a pidfd per process, so a pid recycled during
the walk is never reported. Strings holding control characters or invalid
UTF-8 are printed as quoted Go strings ("\x1b..."). --json prints the whole
report as a JSON object for scripts (see docs/JSON.md). Root only.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := cli.Ask((*client.Client).Audit)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, newAuditJSON(rep))
			}
			fmt.Fprintf(out, "audited %d processes, %d fds; yama ptrace_scope %d\n\n", rep.Processes, rep.FDs, rep.PtraceScope)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ENTRY\tSTATE\tPID\tIDENTITY\tUID\tFD\tEXPOSED")
			print := func(state string, owner, name string, pid int, id string, uid, fd int, exposed bool, how []string) {
				ex := "no"
				if exposed {
					ex = "yes: " + cli.Escape(strings.Join(how, "; "))
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%s\n", cli.Escape(owner+":"+name), state, pid, cli.Escape(id), uid, fd, ex)
			}
			for _, e := range rep.Entries {
				if len(e.Holders) == 0 {
					fmt.Fprintf(tw, "%s\tlive\t-\t(only the agent)\t\t\t\n", cli.Escape(e.Owner+":"+e.Name))
				}
				for _, h := range e.Holders {
					print("live", e.Owner, e.Name, h.PID, h.Identity, h.UID, h.FD, h.Exposed, h.Exposure)
				}
			}
			for _, e := range rep.Removed {
				for _, h := range e.Holders {
					print("stale", e.Owner, e.Name, h.PID, h.Identity, h.UID, h.FD, h.Exposed, h.Exposure)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
