package main

import (
	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/internal/proto"
)

func newRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "Remove one of the caller's entries",
		Long: `Remove the entry NAME owned by the caller's identity. The agent closes its
copy and forgets the name: later acquires fail with not-found. Copies handed
out earlier stay open in their holders; a publisher that checks capabilities
with kcmp (client.Token) stops accepting them once it closes its own copy.`,
		Example: "  capd revoke foo-op-fd",
		Args:    exactArgs(1, "exactly one NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := proto.ValidName(args[0]); err != nil {
				return usageErr("%v", err)
			}
			c, err := dial()
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Revoke(args[0])
		},
	}
}
