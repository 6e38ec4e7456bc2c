package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/cli"
)

func newReloadCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "reload [--json]",
		Short: "Make the agent re-read its configuration, and report the result (host administrators)",
		Long: `Ask the agent to re-read its configuration (capd.toml and conf.d/*.toml) and
wait for the result: the files it read and how many grants and quotas they
hold, or the error that made it keep the configuration in force (exit 1).
Unlike SIGHUP, whose result only reaches the agent's log, this tells the
caller, so it suits ExecReload= in capd.service. --json prints the result as
a JSON object (see docs/JSON.md). Host administrators only.

Replace configuration files by rename (write a new file beside the old one,
then mv it into place): a file rewritten in place can be read half-written,
and a half-written file that still parses is accepted.`,
		Example: `  sudo capd reload
  ExecReload=/usr/bin/capd reload`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := cli.Ask((*client.Client).Reload)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, newReloadJSON(r))
			}
			files := r.Files
			if len(files) == 0 {
				files = []string{"(no file: deny everything)"}
			}
			fmt.Fprintf(out, "reloaded %d grants and %d quotas from %s\n", r.Grants, r.Quotas, strings.Join(files, ", "))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
