package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/cli"
	"github.com/capd-dev/capd/oci"
)

// defaultHooksDir is where Debian's podman 4.3 (and CRI-O) read hooks.d;
// newer podman also reads /etc/containers/oci/hooks.d.
const defaultHooksDir = "/usr/share/containers/oci/hooks.d"

func newHookCmd() *cobra.Command {
	var h cli.Hook
	cmd := &cobra.Command{
		Use:   "hook [--socket PATH] [--timeout DURATION]",
		Short: "OCI hook: give annotated containers their capability fds",
		Long: `Run as an OCI hook at createRuntime (or prestart, for runtimes without it),
and optionally at poststop. It reads the container's state (runtime-spec State) on stdin
and acts only on containers annotated

  io.capd.acquire=OWNER:NAME[,OWNER:NAME...]   the entries the container wants
  io.capd.required=true                        optional: abort creation if the
                                               agent is unreachable or an entry
                                               is refused (default: warn, start)
  io.capd.name=NAME                            optional: the name policy knows
                                               it by (container:NAME), where the
                                               runtime sets none

At createRuntime it registers the container with the agent (its cgroup taken
from its init process through a pidfd) and mounts a read-only tmpfs at
/run/capd inside it, holding capd.sock (the agent's socket) and capd (this
binary), so the workload runs

  /run/capd/capd acquire OWNER:NAME -- CMD [ARG...]

Processes in the container are then known as container:NAME (or
container:ID): policy grants that identity, never the annotation. The
registration ends when the container's cgroup has no process left, which the
agent notices itself; at poststop, if configured, the hook also unregisters
the container (not needed, and a fork and exec more per container). Containers without the annotation are left
alone at once (unless --harden-all).

--timeout DURATION (default 5s; 0: no bound) bounds the whole conversation
with the agent in one hook run: connecting, registering and unregistering.
An agent that does not answer in time (stopped, overloaded) counts as
unreachable: creation of a container annotated io.capd.required=true fails
with a message saying the agent did not answer within the timeout; any
other container starts with a warning on stderr.

It also hides other users' processes in the container's /proc: the procfs
the runtime mounted is reconfigured with hidepid=invisible, and subset=pid
(only process directories) unless the runtime still writes sysctls through
/proc/sys after the hooks (podman does: it sets net.ipv4.ping_group_range).
A process of another uid in the container, and its /proc/PID/fd, are then
invisible; root in the container still sees everything.

For runc, add to config.json:
  "hooks": {"createRuntime": [{"path": "/usr/bin/capd", "args": ["capd", "hook"]}]}
For podman and CRI-O, see 'capd hook install'.`,
		Args: func(cmd *cobra.Command, args []string) error { return h.Args(args) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return h.Run(cmd.InOrStdin(), cmd.ErrOrStderr())
		},
	}
	h.Flags(cmd.Flags())
	cmd.AddCommand(newHookInstallCmd())
	return cmd
}

func newHookInstallCmd() *cobra.Command {
	var dir, socket, path string
	var hardenAll, poststop bool
	cmd := &cobra.Command{
		Use:   "install [--dir DIR] [--socket PATH] [--path BINARY]",
		Short: "Write the oci-hooks(5) file that makes podman and CRI-O run capd hook",
		Long: `Write DIR/capd.json, an oci-hooks(5) configuration that runs 'capd hook' at
createRuntime for containers annotated io.capd.acquire (the annotation key is
matched by an anchored regular expression); with --poststop at poststop too,
which is not needed (the agent ends a registration when the container's
cgroup empties) and costs a fork and exec per container. The default DIR
is ` + defaultHooksDir + `, which Debian's podman 4.3 and CRI-O
read; newer podman also reads /etc/containers/oci/hooks.d. podman --hooks-dir
points elsewhere. The hook runs with the default --timeout of 'capd hook'.`,
		Example: `  sudo capd hook install
  sudo capd hook install --dir /etc/containers/oci/hooks.d --socket /run/capd/capd.sock`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if path == "" {
				// capd, beside this binary, runs the hook without starting
				// capd-full.
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the capd binary: %w (use --path)", err)
				}
				path = filepath.Join(filepath.Dir(exe), "capd")
				if _, err := os.Stat(path); err != nil {
					return fmt.Errorf("find the capd binary: %w (use --path)", err)
				}
			}
			hookArgs := []string{"capd", "hook"}
			if socket != "" {
				hookArgs = append(hookArgs, "--socket", socket)
			}
			if hardenAll {
				hookArgs = append(hookArgs, "--harden-all")
			}
			b, err := oci.HooksD(path, hookArgs, nil, hardenAll, poststop)
			if err != nil {
				return usageErr("%v", err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			file := filepath.Join(dir, "capd.json")
			tmp := file + ".tmp"
			if err := os.WriteFile(tmp, b, 0o644); err != nil {
				return err
			}
			if err := os.Rename(tmp, file); err != nil {
				os.Remove(tmp)
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", file)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultHooksDir, "hooks.d directory")
	cmd.Flags().StringVar(&socket, "socket", "", "agent socket the hook uses (default: the hook's default, "+client.DefaultSocket+")")
	cmd.Flags().StringVar(&path, "path", "", "capd binary the runtime runs (default: capd beside this capd-full)")
	cmd.Flags().BoolVar(&hardenAll, "harden-all", false, "run the hook for every container, to hide other users' processes in every container's /proc")
	cmd.Flags().BoolVar(&poststop, "poststop", false, "run the hook at poststop too (not needed: registrations end when the container's cgroup empties)")
	return cmd
}
