package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/cli"
)

func newListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the entries the caller may see",
		Long: `List the caller's own entries and those it may acquire (root sees all):
owner, name, fd kind (socket, pipe, memfd, file, tmpfile, path, ...), whether
it is pinned, when it expires, and how often it was acquired. Under an entry
published per consumer come its grants, each consumer's own description,
with those delegated from them indented below (the owner and root see all;
a consumer its own). Names holding
control characters or invalid UTF-8 are printed as quoted Go strings
("\x1b..."). --json prints every field for scripts, as a JSON object (see
docs/JSON.md).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			entries, err := cli.Ask((*client.Client).List)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, newListJSON(entries))
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "OWNER\tNAME\tKIND\tPINNED\tEXPIRES\tACQUIRED")
			for _, e := range entries {
				exp := "never"
				if !e.Expires.IsZero() {
					exp = e.Expires.Local().Format(time.DateTime) + " (in " + time.Until(e.Expires).Round(time.Second).String() + ")"
				}
				pinned := "no"
				if e.Pinned {
					pinned = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", cli.Escape(e.Owner), cli.Escape(e.Name), cli.Escape(e.Kind), pinned, exp, e.Acquired)
				for _, g := range e.Grants {
					what := "grant " + g.ID + " for " + cli.Escape(g.Grantee)
					if g.UID != ^uint32(0) {
						what += fmt.Sprintf(" (uid %d)", g.UID)
					}
					if len(g.Restrict) > 0 {
						what += " " + strings.Join(g.Restrict, ",")
					}
					fmt.Fprintf(tw, "%s\t%s%s\t\t\t%s\t%d\n", "", strings.Repeat("  ", g.Depth), "└ "+what, grantExpiry(g.Expires), g.Acquired)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func grantExpiry(t time.Time) string {
	if t.IsZero() {
		return "with the entry"
	}
	return t.Local().Format(time.DateTime)
}
