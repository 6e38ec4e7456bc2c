package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/cli"
)

// The exit codes and errors of internal/cli, shared with cmd/capd.
const (
	exitBusy      = cli.ExitBusy
	exitUsage     = cli.ExitUsage
	exitCodesHelp = cli.ExitCodesHelp
)

type exitError = cli.ExitError

var usageErr = cli.UsageErr

// run is the whole program: parse args, run the subcommand, map the error
// to an exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:   "capd",
		Short: "Capabilities as file descriptors for services and containers",
		Long: `capd keeps named file descriptors for services and hands dups of them to
the services that the admin's policy allows. Who is calling is always taken
from the kernel (the caller's cgroup: NAME.service, NAME.scope or
cgroup:/path), never from the request.

  capd agent                          run the agent
  capd publish NAME --fd N            store fd N under NAME, owned by the caller
  capd acquire OWNER:NAME -- CMD      run CMD with the fds (LISTEN_FDS protocol)
  capd revoke NAME                    forget the caller's entry
  capd list                           what the caller may see
  capd status                         fd usage, cgroups, quotas (root)
  capd hook                           OCI hook for containers (see 'capd hook --help')
  capd audit                          who holds copies of capabilities (root)
  capd whoami                         the identity the agent sees
  capd version                        this binary's version and build
  capd completion SHELL               shell completion (bash, zsh, fish)

Every client subcommand talks to the agent on $CAPD_SOCKET, or ` + client.DefaultSocket + `.

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				cmd.Help()
				return usageErr("a subcommand is required")
			}
			return usageErr("unknown command %q (see 'capd --help')", args[0])
		},
	}
	root.SetVersionTemplate("{{.Version}}")
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &exitError{Code: exitUsage, Err: fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	// A subcommand named first is built alone: the commands that start in
	// front of a workload (acquire, publish, hook, whoami) do not pay for
	// the others' flag sets and help texts. Anything else (no subcommand,
	// a root flag such as --version, help, completion, the man pages)
	// gets the whole tree.
	var cmds []*cobra.Command
	if len(args) > 0 {
		for _, sc := range subcommands {
			if sc.name == args[0] && sc.alone {
				cmds = []*cobra.Command{sc.new()}
			}
		}
	}
	if cmds == nil {
		for _, sc := range subcommands {
			cmds = append(cmds, sc.new())
		}
		root.Version = readBuildInfo().String()
	}
	root.AddCommand(cmds...)
	if len(cmds) > 1 {
		addCompletions(root, args)
	}
	for _, c := range root.Commands() {
		c.SetUsageTemplate(c.UsageTemplate() + "\n" + exitCodesHelp + "\n")
	}
	return cli.Report(stderr, root.ExecuteContext(ctx))
}

// subcommands are capd's commands; alone says one may be built without
// the others when it is named first (not the man page generator, which
// documents them all).
var subcommands = []struct {
	name  string
	new   func() *cobra.Command
	alone bool
}{
	{"agent", newAgentCmd, true},
	{"publish", newPublishCmd, true},
	{"acquire", newAcquireCmd, true},
	{"revoke", newRevokeCmd, true},
	{"check", newCheckCmd, true},
	{"delegate", newDelegateCmd, true},
	{"list", newListCmd, true},
	{"status", newStatusCmd, true},
	{"whoami", newWhoamiCmd, true},
	{"hook", newHookCmd, true},
	{"audit", newAuditCmd, true},
	{"reload", newReloadCmd, true},
	{"check-config", newCheckConfigCmd, true},
	{"version", newVersionCmd, true},
	{"__gen-man", newGenManCmd, false},
}

// exactArgs is cobra.ExactArgs with a usage error that says what is wanted.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErr("%s takes %s (see '%s --help')", cmd.CommandPath(), what, cmd.CommandPath())
		}
		return nil
	}
}
