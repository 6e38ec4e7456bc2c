package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/cli"
)

func newStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show the agent's fd usage and per-cgroup entries and limits (root)",
		Long: `Show how many fds the agent holds against its RLIMIT_NOFILE, and the cgroup
tree that holds entries: for each cgroup, the entries and pins charged to it
(its own and those of every cgroup below it), how many entries it owns, and
the limits that apply with where they come from ([[quota]], the defaults
for owner cgroups, or max_entries for the whole agent at /). A "-" limit
does not limit. Cgroup names holding control characters or invalid UTF-8
are printed as quoted Go strings ("\x1b..."). --json prints the same as a
JSON object for scripts (see docs/JSON.md). Root only.`,
		Example: `  sudo capd status
  sudo capd status --json | jq '.cgroups[] | select(.pinned > 0)'`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := cli.Ask((*client.Client).Status)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, newStatusJSON(st))
			}
			fmt.Fprintf(out, "agent: %d entries (limit %d), %d of %d fds open, %d owner cgroups watched, %d containers\n",
				st.Entries, st.MaxEntries, st.OpenFDs, st.FDLimit, st.Watched, st.Containers)
			fmt.Fprintf(out, "revocation: %s (%s)", st.Enforcement, st.EnforcedBy)
			if st.Enforcement == "enforced" {
				fmt.Fprintf(out, ", %d kernel keys in force", st.InForce)
			}
			if st.Lost > 0 {
				fmt.Fprintf(out, "; %d enforced revocations LOST at start (see the agent's log)", st.Lost)
			}
			fmt.Fprint(out, "\n\n")
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CGROUP\tOWNED\tENTRIES\tMAX_ENTRIES\tPINNED\tMAX_PINNED")
			for _, n := range st.Nodes {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\n", tree(n.Cgroup), n.Owned,
					n.Entries, limit(n.MaxEntries, n.EntriesSource), n.Pinned, limit(n.MaxPinned, n.PinnedSource))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// tree indents a cgroup path by its depth and shows its last component.
func tree(p string) string {
	if p == "/" {
		return "/"
	}
	return strings.Repeat("  ", strings.Count(p, "/")) + cli.Escape(p[strings.LastIndexByte(p, '/'):])
}

func limit(v *uint64, source string) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatUint(*v, 10) + " (" + cli.Escape(source) + ")"
}
