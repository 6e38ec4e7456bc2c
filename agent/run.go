package agent

// Run is the daemon's lifecycle, everything `capd agent` does once its
// flags are parsed: the re-exec into a private mount namespace, the
// configuration and its reloads (SIGHUP, the RELOAD request), the listener
// (bound, socket-activated or handed over, with the stored fds that came
// with it), Restore, the metrics endpoint ([metrics], read at start
// only), Serve, what systemd is told (READY=1, RELOADING=1,
// STOPPING=1, STATUS= and the watchdog), the SIGUSR2 hand-off and Shutdown.
//
// Run owns the listener, the metrics endpoint (closed before a hand-off
// and when Run returns), the signal channel (registered before Restore
// and stopped when Run returns) and the notify goroutine (stopped when Run
// returns). It takes none of the Server's locks: it only calls the Server's
// exported methods, and its one mutex serializes reloads. The hand-off
// (SIGUSR2) drains the Server, freezes its store and execs the agent binary
// again in the same process, passing the listening socket, every entry and
// the metadata as in socket activation, marked by handoffMarker; Run
// returns only if the hand-off could not begin, and exits the process if
// the exec itself fails.

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
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/persist"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/activation"
	"github.com/capd-dev/capd/internal/linux"
)

// Options are what Run needs from the command line.
type Options struct {
	// ConfigPath is the policy file, read with its drop-ins by policy.Load.
	ConfigPath string
	// ConfigMissingOK makes a missing ConfigPath mean deny everything
	// (the default file) rather than an error.
	ConfigMissingOK bool
	// SocketPath is where the agent listens unless systemd passes a
	// socket.
	SocketPath string
	// Log receives everything the agent logs; nil means slog.Default().
	Log *slog.Logger
	// Args is the argv of the agent's re-execs (into its own mount
	// namespace, and the hand-off); nil means os.Args.
	Args []string
}

// exitReexecFailed is the exit code after a failed re-exec: cmd/capd-full's
// exitFailure.
const exitReexecFailed = 1

// Run runs the agent until ctx is done, a SIGTERM or SIGINT, or the serve
// loop fails, and returns the serve loop's error, if any. It first
// re-executes the process in a private mount namespace (privateMountNS),
// which it only returns from if that is not possible. An agent already
// listening on opts.SocketPath is an error wrapping ErrAgentRunning.
func Run(ctx context.Context, opts Options) error {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	args := opts.Args
	if args == nil {
		args = os.Args
	}
	if err := privateMountNS(args); err != nil {
		log.Warn("running in the caller's mount namespace", "err", err)
	}
	configPath, missingOK, socketPath := opts.ConfigPath, opts.ConfigMissingOK, opts.SocketPath

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
	origin := takeOrigin()
	srv, err := New(cfg, log)
	if err != nil {
		if origin >= 0 {
			linux.Close(origin)
		}
		return err
	}
	defer func() {
		if err := srv.Close(); err != nil {
			log.Warn("close", "err", err)
		}
	}()

	l, stored, err := runListener(socketPath)
	if err != nil {
		for _, st := range stored {
			linux.Close(st.FD)
		}
		return err
	}
	defer l.Close()
	stored = srv.adoptOrigin(origin, stored)
	stored = srv.StartEnforcement(stored)
	if len(stored) > 0 {
		n := srv.Restore(stored)
		if os.Getenv(handoffMarker) == strconv.Itoa(os.Getpid()) {
			log.Info("restored entries from the previous agent process", "entries", n)
		} else {
			log.Info("restored entries from systemd's fd store", "entries", n)
		}
	}
	srv.CheckLedger()

	// The metrics endpoint is optional: one that cannot listen is logged
	// and the agent serves without it.
	mx, err := srv.startMetrics(cfg.Metrics)
	if err != nil {
		log.Error("metrics endpoint not started; serving without it", "err", err)
	}
	defer mx.Close()

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
		if next.Metrics != cfg.Metrics {
			log.Warn("[metrics] changed; the agent reads it at start only: restart the agent to apply it",
				"in_force", describeMetrics(cfg.Metrics), "configured", describeMetrics(next.Metrics))
		}
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
				mx.Close() // the next process binds it again
				serveErr = execHandoff(log, srv, l, served, exe, args)
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

// agentSignals are the signals the agent handles. Its re-execs (into its
// own mount namespace at start, and the SIGUSR2 hand-off) block them across
// execve, so that one arriving before the new process's signal.Notify stays
// pending for it instead of killing the process, and the store with it, by
// its default action.
var agentSignals = []unix.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR2}

// nsMarker tells the re-executed agent that it already runs in its own
// mount namespace. Its value is the pid, which exec keeps, so that a marker
// inherited from elsewhere does not count.
const nsMarker = "CAPD_AGENT_PRIVATE_NS"

// privateMountNS re-executes the agent (argv args) in a mount namespace of
// its own with private propagation (see linux.ExecInNewMountNS), unless it
// already is. It returns only if that is not possible (no CAP_SYS_ADMIN).
func privateMountNS(args []string) error {
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
	origin, marker := openOrigin()
	if origin >= 0 {
		env = append(env, marker)
	}
	entered, err := linux.ExecInNewMountNS(args, env, agentSignals)
	if !entered {
		if origin >= 0 {
			linux.Close(origin)
		}
		return err
	}
	// Past the unshare: this thread is in a half-set-up namespace.
	fmt.Fprintf(os.Stderr, "capd: agent: %v\n", err)
	os.Exit(exitReexecFailed)
	return nil
}

// notifyLoop keeps systemd informed until stop: STATUS= with the entry and
// container counts when they change, and WATCHDOG=1 at half the interval
// systemd asks for (WatchdogSec=), but only while the agent's locks can be
// taken, so that a wedged agent is restarted.
func notifyLoop(log *slog.Logger, srv *Server, stop <-chan struct{}) {
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
// the new process is dumpable from execve until New, with every entry fd
// in its table. Attaching to a dumpable process of the same uid needs a
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

// execHandoff restarts the agent in place without losing anything: it
// stops serving, ends every connection (clients reconnect; a request in
// flight may fail once), freezes the store and execs the agent binary exe
// again (argv args) with the listening socket, every entry, every
// container registration and the metadata passed as in socket activation.
// The listening socket stays open throughout, so connection attempts wait
// in its backlog. It returns only if the hand-off could not begin; after
// the exec failed it exits, as the store is frozen and this thread's fd
// table rearranged.
func execHandoff(log *slog.Logger, srv *Server, l *Listener, served <-chan error, exe string, args []string) error {
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
	if srv.origin >= 0 {
		names, fds = append(names, originName), append(fds, srv.origin)
	}
	for _, f := range srv.enforcementFiles() {
		names, fds = append(names, f.Name), append(fds, f.FD)
	}
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
	err = linux.ExecAgentWithFDs(exe, args, env, fds, agentSignals)
	fmt.Fprintf(os.Stderr, "capd: agent: hand-off: %v\n", err)
	os.Exit(exitReexecFailed)
	return nil
}

// runListener returns the socket-activated listener if systemd (or the
// previous agent process) passed one, else binds socketPath. It also
// returns the fds systemd kept in the service's fd store (entries and
// their metadata), by name, for Restore. A live agent on socketPath is an
// error wrapping ErrAgentRunning.
func runListener(socketPath string) (*Listener, []Stored, error) {
	var stored []Stored
	var socks []int
	files, _ := activation.Files()
	activation.Unset()
	for _, f := range files {
		fd, err := linux.DupCloexec(f.FD, 3)
		linux.Close(f.FD)
		if err != nil {
			return nil, stored, err
		}
		if persist.IsStored(f.Name) {
			stored = append(stored, Stored{Name: f.Name, FD: fd})
		} else {
			socks = append(socks, fd)
		}
	}
	switch len(socks) {
	case 0:
		l, err := Listen(socketPath)
		return l, stored, err
	case 1:
		l, err := FileListener(socks[0])
		return l, stored, err
	}
	for _, fd := range socks {
		linux.Close(fd)
	}
	return nil, stored, fmt.Errorf("systemd passed %d sockets; capd takes exactly one", len(socks))
}
