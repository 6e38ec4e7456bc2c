package main

import (
	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/internal/cli"
	"github.com/capd-dev/capd/internal/proto"
)

func newRevokeCmd() *cobra.Command {
	var owner, grant string
	var shutdown bool
	cmd := &cobra.Command{
		Use:   "revoke [--owner IDENTITY] [--shutdown | --grant ID] NAME",
		Short: "Remove one of the caller's entries (root: anyone's)",
		Long: `Remove the entry NAME owned by the caller's identity. The agent closes its
copy and forgets the name: later acquires fail with not-found. Copies handed
out earlier stay open in their holders; a publisher that checks capabilities
with kcmp (client.Token) stops accepting them once it closes its own copy.

Only the uid that published an entry, or root, may revoke it. Root may name
another owner with --owner, e.g. to remove the pinned entries of a service
that is gone for good.

--shutdown makes revocation reach the copies already handed out, where
Linux allows it: for a socket entry the agent first calls shutdown(2) with
SHUT_RDWR, which acts on the socket itself, so every holder's copy reads
end-of-file and fails to write. Other kinds are refused with --shutdown
(see docs/SECURITY.md for what revocation means per fd kind).

--grant ID revokes one consumer's grant of an entry published per consumer
(capd list shows them), and every grant delegated from it; the entry and the
other consumers' grants stay. That consumer is refused the entry from then
on, until it is published anew (--replace). The holder of a grant may revoke
what was delegated from it (with --owner naming the entry's owner).

Where the kernel offers BPF LSM (capd status says), a revoke is enforced:
every holder's further read, write, mmap, send, receive and passing on of a
revoked description fails with EPERM. Elsewhere it is advisory.`,
		Example: `  capd revoke foo-op-fd
  capd revoke --shutdown zincati-fd
  capd revoke --grant g7 config-dir
  sudo capd revoke --owner rpm-ostreed.service foo-op-fd`,
		Args: exactArgs(1, "exactly one NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := proto.ValidName(args[0]); err != nil {
				return usageErr("%v", err)
			}
			if cmd.Flags().Changed("owner") && (owner == "" || len(owner) > proto.MaxIdentity) {
				return usageErr("--owner needs an identity such as rpm-ostreed.service or cgroup:/path")
			}
			if grant != "" && shutdown {
				return usageErr("--grant and --shutdown exclude each other: a grant's description is its own")
			}
			if err := proto.ValidGrantID(grant); grant != "" && err != nil {
				return usageErr("--grant: %v", err)
			}
			c, err := cli.Dial()
			if err != nil {
				return err
			}
			defer c.Close()
			switch {
			case grant != "":
				return c.RevokeGrant(owner, args[0], grant)
			case shutdown:
				return c.RevokeShutdown(owner, args[0])
			case owner != "":
				return c.RevokeOwner(owner, args[0])
			}
			return c.Revoke(args[0])
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "revoke an entry of this owner identity (root only)")
	cmd.Flags().BoolVar(&shutdown, "shutdown", false, "shut a socket entry down first, so that every copy stops working")
	cmd.Flags().StringVar(&grant, "grant", "", "revoke only this grant (and those delegated from it), e.g. g7")
	return cmd
}
