package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
)

// Exit codes, stable and documented in --help and the README.
const (
	exitOK               = 0
	exitFailure          = 1
	exitUsage            = 2
	exitUnreachable      = 3
	exitPermissionDenied = 4
	exitNotFound         = 5
	exitExists           = 6
	exitQuotaExceeded    = 7
	exitBusy             = 8
	exitCannotExec       = 126
	exitCommandNotFound  = 127
)

const exitCodesHelp = `Exit codes:
  0    success
  1    failure not listed below
  2    usage error (bad flags or arguments)
  3    the agent is not reachable on its socket
  4    permission-denied: policy or the owner's allow list refuses it
  5    not-found: no such entry (never published, revoked or expired)
  6    exists: the name is already published
  7    quota-exceeded: a store or quota limit refuses the entry
  8    busy: the agent refuses more connections or is shutting down
  126  acquire: COMMAND cannot be executed
  127  acquire: COMMAND not found`

// exitError carries an exit code out of a subcommand.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode maps an error to the documented exit code.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, client.ErrPermissionDenied):
		return exitPermissionDenied
	case errors.Is(err, client.ErrNotFound):
		return exitNotFound
	case errors.Is(err, client.ErrExists):
		return exitExists
	case errors.Is(err, client.ErrQuotaExceeded):
		return exitQuotaExceeded
	case errors.Is(err, client.ErrBusy):
		return exitBusy
	}
	return exitFailure
}

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
		return &exitError{code: exitUsage, err: fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
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
	err := root.ExecuteContext(ctx)
	if err != nil {
		// Agent errors quote cgroup paths and identities, which may hold
		// any byte.
		fmt.Fprintf(stderr, "capd: %s\n", escape(err.Error()))
	}
	return exitCode(err)
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

// dial connects to the agent, mapping failure to exitUnreachable.
func dial() (*client.Client, error) {
	c, err := client.Dial("")
	if err != nil {
		return nil, &exitError{code: exitUnreachable, err: fmt.Errorf("%w (is the agent running? set CAPD_SOCKET for another socket)", err)}
	}
	return c, nil
}

// ask dials the agent, asks it one thing and hangs up.
func ask[T any](q func(*client.Client) (T, error)) (T, error) {
	c, err := dial()
	if err != nil {
		var zero T
		return zero, err
	}
	defer c.Close()
	return q(c)
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
