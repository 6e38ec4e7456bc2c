package main

import (
	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/internal/proto"
)

func newRevokeCmd() *cobra.Command {
	var owner string
	cmd := &cobra.Command{
		Use:   "revoke [--owner IDENTITY] NAME",
		Short: "Remove one of the caller's entries (root: anyone's)",
		Long: `Remove the entry NAME owned by the caller's identity. The agent closes its
copy and forgets the name: later acquires fail with not-found. Copies handed
out earlier stay open in their holders; a publisher that checks capabilities
with kcmp (client.Token) stops accepting them once it closes its own copy.

Only the uid that published an entry, or root, may revoke it. Root may name
another owner with --owner, e.g. to remove the pinned entries of a service
that is gone for good.`,
		Example: `  capd revoke foo-op-fd
  sudo capd revoke --owner rpm-ostreed.service foo-op-fd`,
		Args: exactArgs(1, "exactly one NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := proto.ValidName(args[0]); err != nil {
				return usageErr("%v", err)
			}
			if cmd.Flags().Changed("owner") && (owner == "" || len(owner) > proto.MaxIdentity) {
				return usageErr("--owner needs an identity such as rpm-ostreed.service or cgroup:/path")
			}
			c, err := dial()
			if err != nil {
				return err
			}
			defer c.Close()
			if owner != "" {
				return c.RevokeOwner(owner, args[0])
			}
			return c.Revoke(args[0])
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "revoke an entry of this owner identity (root only)")
	return cmd
}
