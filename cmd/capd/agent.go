package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/activation"
	"github.com/capd-dev/capd/internal/journal"
	"github.com/capd-dev/capd/internal/linux"
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
			log := slog.New(h)
			if err := privateMountNS(); err != nil {
				log.Warn("running in the caller's mount namespace", "err", err)
			}
			missingOK := !cmd.Flags().Changed("config") && os.Getenv("CAPD_CONFIG") == ""
			if socketPath == "" {
				socketPath = client.SocketPath()
			}
			return runAgent(cmd.Context(), log, configPath, missingOK, socketPath)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", defaultConfig(), "policy file (default $CAPD_CONFIG, else "+policy.DefaultPath+")")
	cmd.Flags().StringVar(&socketPath, "socket", "", "socket path (default $CAPD_SOCKET or "+client.DefaultSocket+")")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// agentSignals are the signals the agent handles. Its re-execs (into its
// own mount namespace at start, and the SIGUSR2 hand-off) block them across
// execve, so that one arriving before the new process's signal.Notify stays
// pending for it instead of killing the process, and the store with it, by
// its default action.
var agentSignals = []unix.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR2}

// defaultConfig is the configuration file: $CAPD_CONFIG, else
// policy.DefaultPath.
func defaultConfig() string {
	if p := os.Getenv("CAPD_CONFIG"); p != "" {
		return p
	}
	return policy.DefaultPath
}

// nsMarker tells the re-executed agent that it already runs in its own
// mount namespace. Its value is the pid, which exec keeps, so that a marker
// inherited from elsewhere does not count.
const nsMarker = "CAPD_AGENT_PRIVATE_NS"

// privateMountNS re-executes the agent in a mount namespace of its own
// with private propagation (see linux.ExecInNewMountNS), unless it already
// is. It returns only if that is not possible (no CAP_SYS_ADMIN).
func privateMountNS() error {
	pid := strconv.Itoa(os.Getpid())
	if os.Getenv(nsMarker) == pid {
		return nil
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, nsMarker+"=") {
			env = append(env, kv)
		}
	}
	env = append(env, nsMarker+"="+pid)
	entered, err := linux.ExecInNewMountNS(os.Args, env, agentSignals)
	if !entered {
		return err
	}
	// Past the unshare: this thread is in a half-set-up namespace.
	fmt.Fprintf(os.Stderr, "capd: agent: %v\n", err)
	os.Exit(exitFailure)
	return nil
}

func runAgent(ctx context.Context, log *slog.Logger, configPath string, missingOK bool, socketPath string) error {
	// Signals from the start: a SIGUSR2 or SIGTERM that arrives while the
	// agent restores its store waits for the loop below instead of killing
	// the process (the default action) with the store in its fd table.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR2) // unblocks what the re-exec blocked
	defer signal.Stop(sigs)
	cfg, err := policy.Load(configPath, missingOK)
	if err != nil {
		return fmt.Errorf("load config: %w", err)
	}
	for _, w := range cfg.Warnings {
		log.Warn("suspicious configuration", "warning", w)
	}
	if len(cfg.Files) == 0 {
		log.Warn("no configuration file; every acquire except an owner's own is denied", "config", configPath)
	}
	srv, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := srv.Close(); err != nil {
			log.Warn("close", "err", err)
		}
	}()

	l, stored, err := listener(socketPath)
	if err != nil {
		for _, st := range stored {
			linux.Close(st.FD)
		}
		return err
	}
	defer l.Close()
	if len(stored) > 0 {
		n := srv.Restore(stored)
		if os.Getenv(handoffMarker) == strconv.Itoa(os.Getpid()) {
			log.Info("restored entries from the previous agent process", "entries", n)
		} else {
			log.Info("restored entries from systemd's fd store", "entries", n)
		}
	}

	// reload serves SIGHUP and the RELOAD request (capd reload), one at a
	// time.
	var reloading sync.Mutex
	reload := func() (*policy.Config, error) {
		reloading.Lock()
		defer reloading.Unlock()
		daemon.SdNotify(false, daemon.SdNotifyReloading)
		defer daemon.SdNotify(false, daemon.SdNotifyReady)
		next, err := policy.Load(configPath, missingOK)
		if err != nil {
			log.Error("reload failed; keeping the current configuration", "err", err)
			return nil, err
		}
		for _, w := range next.Warnings {
			log.Warn("suspicious configuration", "warning", w)
		}
		srv.Reload(next)
		log.Info("configuration reloaded", "config", next.Files, "grants", len(next.Grants), "quotas", len(next.Quotas))
		return next, nil
	}
	srv.SetReloader(reload)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.Info("agent serving", "socket", socketPath, "config", cfg.Files, "grants", len(cfg.Grants),
		"quotas", len(cfg.Quotas))
	daemon.SdNotify(false, daemon.SdNotifyReady)
	stopNotify := make(chan struct{})
	defer close(stopNotify)
	go notifyLoop(log, srv, stopNotify)

	var serveErr error
loop:
	for {
		select {
		case sig := <-sigs:
			if sig == unix.SIGHUP {
				reload()
				continue
			}
			if sig == unix.SIGUSR2 {
				if err := handoffSafe(); err != nil {
					log.Error("no hand-off; still serving", "err", err)
					continue
				}
				exe, err := os.Executable()
				if err != nil {
					log.Error("no hand-off: cannot find the agent binary; still serving", "err", err)
					continue
				}
				serveErr = handoff(log, srv, l, served, exe)
				break loop // only when the hand-off failed before exec
			}
			log.Info("stopping", "signal", sig.String())
			break loop
		case serveErr = <-served:
			break loop
		case <-ctx.Done():
			break loop
		}
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	if serveErr == nil {
		serveErr = <-served
	}
	return serveErr
}

// notifyLoop keeps systemd informed until stop: STATUS= with the entry and
// container counts when they change, and WATCHDOG=1 at half the interval
// systemd asks for (WatchdogSec=), but only while the agent's locks can be
// taken, so that a wedged agent is restarted.
func notifyLoop(log *slog.Logger, srv *agent.Server, stop <-chan struct{}) {
	watchdog, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("watchdog requested but unusable", "err", err)
	}
	tick := 2 * time.Second
	if watchdog > 0 {
		tick = min(tick, watchdog/2)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	last := ""
	for {
		status := fmt.Sprintf("STATUS=%d entries, %d containers", srv.Entries(), srv.Containers())
		if status != last {
			daemon.SdNotify(false, status)
			last = status
		}
		if watchdog > 0 {
			if srv.Responsive(watchdog / 2) {
				daemon.SdNotify(false, daemon.SdNotifyWatchdog)
			} else {
				log.Error("the agent's locks are held past half the watchdog interval; not telling systemd it is alive", "watchdog", watchdog)
			}
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// errHandoffUnsafe refuses a hand-off that would expose the store.
var errHandoffUnsafe = errors.New("the agent lacks CAP_SYS_PTRACE in its permitted set: while the new binary starts (until it makes itself non-dumpable) a process of the same uid with more capabilities could take its fds; restart it through systemd instead, whose fd store keeps the entries")

// handoffSafe checks that the exec's dumpable window gives nobody anything:
// the new process is dumpable from execve until agent.New, with every entry
// fd in its table. Attaching to a dumpable process of the same uid needs a
// superset of its permitted capabilities; while those include
// CAP_SYS_PTRACE, whoever can attach then could attach, non-dumpable or
// not, at any time.
func handoffSafe() error {
	st, err := linux.ReadProcStatus("self")
	if err != nil {
		return err
	}
	if st.CapPrm&(1<<linux.CapSysPtrace) == 0 {
		return errHandoffUnsafe
	}
	return nil
}

// handoffMarker tells the new agent process that its fds come from the
// previous one (its value is the pid, which exec keeps).
const handoffMarker = "CAPD_HANDOFF"

// handoff restarts the agent in place without losing anything: it stops
// serving, ends every connection (clients reconnect; a request in flight
// may fail once), freezes the store and execs the agent binary again with
// the listening socket, every entry, every container registration and the
// metadata passed as in socket activation. The listening socket stays open
// throughout, so connection attempts wait in its backlog. It returns only
// if the hand-off could not begin; after the exec failed it exits, as the
// store is frozen and this thread's fd table rearranged.
func handoff(log *slog.Logger, srv *agent.Server, l *agent.Listener, served <-chan error, exe string) error {
	log.Info("handing over to a new agent process", "binary", exe)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Drain(ctx); err != nil {
		log.Warn("hand-off: connections still open", "err", err)
	}
	if err := <-served; err != nil {
		log.Warn("hand-off: serve loop", "err", err)
	}
	names, fds, err := srv.Handoff()
	if err != nil {
		log.Error("hand-off failed; stopping (entries are lost without systemd)", "err", err)
		return err
	}
	names, fds = append([]string{"capd.sock"}, names...), append([]int{l.FD()}, fds...)
	pid := strconv.Itoa(os.Getpid())
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "LISTEN_PIDFDID", handoffMarker:
		default:
			env = append(env, kv)
		}
	}
	env = append(env, "LISTEN_FDS="+strconv.Itoa(len(fds)), "LISTEN_FDNAMES="+strings.Join(names, ":"),
		"LISTEN_PID="+pid, handoffMarker+"="+pid)
	err = linux.ExecAgentWithFDs(exe, os.Args, env, fds, agentSignals)
	fmt.Fprintf(os.Stderr, "capd: agent: hand-off: %v\n", err)
	os.Exit(exitFailure)
	return nil
}

// listener returns the socket-activated listener if systemd passed one,
// else binds socketPath. It also returns the fds systemd kept in the
// service's fd store (entries and their metadata), by name, for Restore.
func listener(socketPath string) (*agent.Listener, []agent.Stored, error) {
	var stored []agent.Stored
	var socks []int
	files, _ := activation.Files()
	activation.Unset()
	for _, f := range files {
		fd, err := linux.DupCloexec(f.FD, 3)
		linux.Close(f.FD)
		if err != nil {
			return nil, stored, err
		}
		if strings.HasPrefix(f.Name, "e-") || strings.HasPrefix(f.Name, "c-") || strings.HasPrefix(f.Name, "capd-meta-") {
			stored = append(stored, agent.Stored{Name: f.Name, FD: fd})
		} else {
			socks = append(socks, fd)
		}
	}
	switch len(socks) {
	case 0:
		l, err := agent.Listen(socketPath)
		if errors.Is(err, agent.ErrAgentRunning) {
			err = &exitError{code: exitBusy, err: err}
		}
		return l, stored, err
	case 1:
		l, err := agent.FileListener(socks[0])
		return l, stored, err
	}
	for _, fd := range socks {
		linux.Close(fd)
	}
	return nil, stored, fmt.Errorf("systemd passed %d sockets; capd takes exactly one", len(socks))
}
