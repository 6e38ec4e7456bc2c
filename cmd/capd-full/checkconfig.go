package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/cli"
)

func newCheckConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check-config [FILE...]",
		Short: "Check configuration files as the agent would read them",
		Long: `Read the configuration the agent would read (FILE and its drop-ins; without
FILE, $CAPD_CONFIG or ` + policy.DefaultPath + ` and the system drop-in
directories), and report what it holds, or the first error with its file,
line and column (exit 1). Patterns that can never match an identity (such
as "rpm-ostreed:zincati-fd", missing its ".service") are reported as
warnings with their position; they do not fail the check. Nothing is sent
to the agent: use it in ExecStartPre= or before 'capd reload'.`,
		Example: `  capd check-config
  capd check-config /etc/capd/capd.toml.new
  ExecStartPre=/usr/bin/capd check-config`,
		RunE: func(cmd *cobra.Command, args []string) error {
			files := args
			if len(files) == 0 {
				files = []string{defaultConfig()}
			}
			out := cmd.OutOrStdout()
			for _, f := range files {
				cfg, err := policy.Load(f, false)
				if err != nil {
					return err
				}
				for _, w := range cfg.Warnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "capd: warning: %s\n", cli.Escape(w))
				}
				fmt.Fprintf(out, "%s: %d grants, %d quotas from %d files\n", cli.Escape(f), len(cfg.Grants), len(cfg.Quotas), len(cfg.Files))
			}
			return nil
		},
	}
	return cmd
}
