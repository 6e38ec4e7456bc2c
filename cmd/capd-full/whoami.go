package main

import (
	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/cli"
)

func newWhoamiCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Print the identity the agent sees for the caller",
		Long: `Print the identity the agent derives from the kernel for this process:
the systemd unit owning its cgroup (NAME.service, NAME.scope) or cgroup:/PATH.
This is the identity that owns what the caller publishes and that policy
matches when it acquires. An identity holding control characters or
invalid UTF-8 (cgroup names may) is printed as a quoted Go string
("cgroup:/\x1b..."). --json prints a JSON object that adds the cgroup, uid
and pid (see docs/JSON.md).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !asJSON {
				return cli.Whoami(cmd.OutOrStdout())
			}
			id, err := cli.Ask((*client.Client).Whoami)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), newWhoamiJSON(id))
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print identity, cgroup, uid and pid as JSON")
	return cmd
}
