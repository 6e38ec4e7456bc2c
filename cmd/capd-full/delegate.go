package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/cli"
	"github.com/capd-dev/capd/internal/proto"
)

func newDelegateCmd() *cobra.Command {
	var to string
	var fd int
	var restrict []string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "delegate OWNER:NAME --to IDENTITY --fd N [--restrict LIST] [--ttl DURATION]",
		Short: "Hand on a capability acquired per consumer, as a grant derived from one's own",
		Long: `Derive a grant of OWNER:NAME for IDENTITY from the caller's own grant,
which fd N must be (what capd acquire passed it, e.g. fd 3). The delegate then
acquires OWNER:NAME as usual and gets a description of its own. Policy must
allow it: the caller's [[grant]] for the entry names IDENTITY in delegate_to,
and the owner's allow list admits IDENTITY.

A delegated grant never holds more than its parent: --restrict can only add
(read-only; for directories nosuid, nodev, noexec), and it ends when the
parent ends (revoked, expired, its owner gone) or after --ttl. Revoking a
grant revokes every grant derived from it ('capd revoke --grant ID'); the
caller may revoke what it delegated. max_grants and max_grant_depth bound the
tree, and a delegated grant counts as an entry of the delegator's in its quotas.`,
		Example: `  capd delegate rpm-ostreed.service:state-dir --to helper.service --fd 3
  capd delegate rpm-ostreed.service:config --to container:web --fd 3 --restrict read-only --ttl 10m`,
		Args: exactArgs(1, "exactly one OWNER:NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			owner, name, err := proto.SplitRef(args[0])
			if err != nil {
				return usageErr("%v", err)
			}
			if to == "" {
				return usageErr("--to needs the identity to delegate to, e.g. helper.service")
			}
			if !cmd.Flags().Changed("fd") || fd < 0 {
				return usageErr("--fd needs the fd of the grant to delegate from (what capd acquire passed)")
			}
			if cmd.Flags().Changed("ttl") && ttl < time.Millisecond {
				return usageErr("--ttl must be at least 1ms, not %v", ttl)
			}
			c, err := cli.Dial()
			if err != nil {
				return err
			}
			defer c.Close()
			g, err := c.Delegate(owner, name, fd, to, &client.DelegateOptions{Restrict: restrict, TTL: ttl})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "grant %s of %s for %s, from %s\n", g.ID, args[0], cli.Escape(to), g.Parent)
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the identity to delegate to")
	cmd.Flags().IntVar(&fd, "fd", -1, "the fd holding the caller's grant")
	cmd.Flags().StringSliceVar(&restrict, "restrict", nil, "withhold more: read-only, nosuid, nodev, noexec")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "end the delegated grant after this long")
	return cmd
}

func newCheckCmd() *cobra.Command {
	var owner string
	var fd int
	cmd := &cobra.Command{
		Use:   "check [--owner IDENTITY] --fd N NAME",
		Short: "Tell which of one's entry's descriptions an fd is, and whose grant",
		Long: `Ask the agent whether fd N is the caller's entry NAME: its own description
(shared by every consumer), or one consumer's grant of it (an entry published
per consumer), and whom that grant was made for. Exits 0 and prints the
answer if it is; an fd that is none of them fails with not-ours. The kernel
answers (same open file description), so a copy cannot pass for another.
Root may ask about another owner's entry with --owner.`,
		Example: `  capd check --fd 5 foo-op-fd`,
		Args:    exactArgs(1, "exactly one NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := proto.ValidName(args[0]); err != nil {
				return usageErr("%v", err)
			}
			if !cmd.Flags().Changed("fd") || fd < 0 {
				return usageErr("--fd needs the fd to check")
			}
			c, err := cli.Dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ch, err := c.CheckFD(owner, args[0], fd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if ch.Grant == nil {
				fmt.Fprintf(out, "%s:%s itself\n", cli.Escape(ch.Owner), cli.Escape(ch.Name))
				return nil
			}
			g := ch.Grant
			fmt.Fprintf(out, "%s:%s grant %s for %s", cli.Escape(ch.Owner), cli.Escape(ch.Name), g.ID, cli.Escape(g.Grantee))
			if g.Parent != "" {
				fmt.Fprintf(out, ", delegated from %s", g.Parent)
			}
			fmt.Fprintln(out)
			return nil
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the entry's owner (root only; default: the caller)")
	cmd.Flags().IntVar(&fd, "fd", -1, "the fd to check")
	return cmd
}
