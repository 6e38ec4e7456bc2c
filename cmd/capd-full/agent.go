package main

import (
	"errors"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/agent"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/journal"
)

func newAgentCmd() *cobra.Command {
	var (
		configPath string
		socketPath string
		logLevel   string
	)
	cmd := &cobra.Command{
		Use:   "agent [--config FILE] [--socket PATH]",
		Short: "Run the capd agent",
		Long: `Run the agent in the foreground. It listens on an AF_UNIX SOCK_SEQPACKET
socket (--socket, else $CAPD_SOCKET, else ` + client.DefaultSocket + `; a socket passed
by systemd socket activation is used instead), reads policy from --config
(default $CAPD_CONFIG, else ` + policy.DefaultPath + `, plus *.toml drop-ins: for
the default file those of /usr/lib/capd/conf.d, /run/capd/conf.d and
/etc/capd/conf.d, a file in a later one replacing a file of the same name in
an earlier one, as systemd reads drop-ins; for another file those of conf.d/
beside it; a missing default file means deny everything), and logs to stderr.

It refuses to start when another agent answers on the socket, and removes a
stale socket file left by a dead one. It tells systemd READY=1 when serving.

Entries follow their owners: an unpinned entry is dropped as soon as its
owner's cgroup (the unit's cgroup, or the plain cgroup) has no processes
left; a pinned one stays until revoked or expired. Quotas ([[quota]] and the
per-owner defaults) bound entries and pins per cgroup subtree. At start the
agent raises its soft RLIMIT_NOFILE to the hard limit and logs how many
entries fit; it warns, with numbers, when max_entries does not fit.

Signals: SIGTERM or SIGINT stop it (closing every stored fd); SIGHUP re-reads
the configuration atomically: a bad file is logged and the old policy stays;
SIGUSR2 restarts the agent in place (same pid) from its binary on disk, for
upgrades without systemd: entries, container registrations and the listening
socket are handed to the new process, and clients see at most one failed
request, which the Go client retries. Under systemd every entry also lives
in the service's fd store, so a crash loses nothing; without systemd a crash
loses the store.
A reload never drops entries, even where a lowered limit is now exceeded.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usageErr("--log-level: %v", err)
			}
			// Under journald, native records with real priorities and
			// fields; elsewhere text on stderr.
			var h slog.Handler = slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level})
			if journal.Active() {
				h = journal.NewHandler("capd", level)
			}
			if socketPath == "" {
				socketPath = client.SocketPath()
			}
			err := agent.Run(cmd.Context(), agent.Options{
				ConfigPath:      configPath,
				ConfigMissingOK: !cmd.Flags().Changed("config") && os.Getenv("CAPD_CONFIG") == "",
				SocketPath:      socketPath,
				Log:             slog.New(h),
			})
			if errors.Is(err, agent.ErrAgentRunning) {
				err = &exitError{Code: exitBusy, Err: err}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&configPath, "config", defaultConfig(), "policy file (default $CAPD_CONFIG, else "+policy.DefaultPath+")")
	cmd.Flags().StringVar(&socketPath, "socket", "", "socket path (default $CAPD_SOCKET or "+client.DefaultSocket+")")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// defaultConfig is the configuration file: $CAPD_CONFIG, else
// policy.DefaultPath.
func defaultConfig() string {
	if p := os.Getenv("CAPD_CONFIG"); p != "" {
		return p
	}
	return policy.DefaultPath
}
