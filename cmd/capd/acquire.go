package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/activation"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

func newAcquireCmd() *cobra.Command {
	var optional, privateProc bool
	var wait string
	cmd := &cobra.Command{
		Use:   "acquire [--optional] [--wait[=TIMEOUT]] OWNER:NAME... -- COMMAND [ARG...]",
		Short: "Run COMMAND with acquired fds, socket-activation style",
		Long: `Acquire each OWNER:NAME from the agent and execute COMMAND in place of capd
with the fds at 3, 4, ... in the order given, and the environment of the
systemd socket-activation protocol:

  LISTEN_FDS=<number of fds>
  LISTEN_FDNAMES=<the entry NAMEs, ':'-separated, in order>
  LISTEN_PID=<the pid, which COMMAND keeps>

so any sd_listen_fds_with_names() program consumes them unchanged.

Fds that capd itself received by socket activation (LISTEN_PID is capd's
own pid, as when a unit with its own .socket runs ExecStart=capd acquire
...) are kept: they come first, at 3, 4, ..., with their names from
LISTEN_FDNAMES ("unknown" where it names none), and the acquired fds follow.
No other fd above 2 that capd inherited reaches COMMAND, and LISTEN_*
variables meant for another process are replaced.

An entry that is absent (not-found) or not granted (permission-denied) makes
capd fail before COMMAND runs, naming the entry and the reason. With
--optional such entries are skipped with a warning and the rest delivered;
with no fd left, LISTEN_* are unset.

--wait waits for entries that are not published yet (the agent answers the
moment the publisher publishes; no polling), up to TIMEOUT (e.g. 30s; no
TIMEOUT: forever), then fails as not-found. Refusals by policy come at once.
It removes the need to order a consumer strictly after its publisher: a
unit with After=publisher.service and 'capd acquire --wait=1min X -- prog'
starts even while the publisher is still getting ready.

Exposure. Whoever may ptrace COMMAND can take its fds (pidfd_getfd) or
reopen /proc/PID/fd/N. What capd can set before exec and what survives it:
  - non-dumpable (PR_SET_DUMPABLE 0): reset by execve, so COMMAND must set
    it itself (client.Harden in Go) once it started;
  - --private-proc: COMMAND gets a mount namespace of its own with a /proc
    mounted hidepid=invisible (needs CAP_SYS_ADMIN; survives execve): what
    COMMAND and its children see is limited to their own uid's processes.
    It does not hide COMMAND from processes outside that namespace;
  - a uid of its own (setpriv, systemd's DynamicUser=): the strongest
    separation short of CAP_SYS_PTRACE, and it survives execve.
See docs/SECURITY.md and 'capd audit'.`,
		Example: `  capd acquire rpm-ostreed.service:zincati-fd -- zincati agent
  capd acquire --optional a.service:x b.service:y -- ./server`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case dash < 0:
				return usageErr("missing '-- COMMAND' (see 'capd acquire --help')")
			case dash == 0:
				return usageErr("name at least one OWNER:NAME before '--'")
			case dash == len(args):
				return usageErr("missing COMMAND after '--'")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			timeout := time.Duration(-1)
			if cmd.Flags().Changed("wait") && wait != "forever" {
				d, err := parseSpan(wait)
				if err != nil || d < 0 {
					return usageErr("--wait=%s: want a duration such as 30s, 1min or 1m30s, or no value to wait forever", wait)
				}
				timeout = d
			} else if !cmd.Flags().Changed("wait") {
				timeout = 0
			}
			return acquireExec(cmd, args[:dash], args[dash:], optional, privateProc, timeout)
		},
	}
	cmd.Flags().BoolVar(&optional, "optional", false, "skip entries that are absent or not granted instead of failing")
	cmd.Flags().StringVar(&wait, "wait", "", "wait up to this long for entries not yet published (no value: forever)")
	cmd.Flags().Lookup("wait").NoOptDefVal = "forever"
	cmd.Flags().BoolVar(&privateProc, "private-proc", false, "run COMMAND in its own mount namespace with a /proc that hides other users' processes (hidepid=invisible)")
	return cmd
}

// acquireExec acquires refs, waiting up to wait for entries not yet
// published (0: not at all, < 0: forever), and executes command.
func acquireExec(cmd *cobra.Command, refs, command []string, optional, privateProc bool, wait time.Duration) error {
	type ref struct{ owner, name string }
	parsed := make([]ref, len(refs))
	for i, r := range refs {
		owner, name, err := proto.SplitRef(r)
		if err != nil {
			return usageErr("%v", err)
		}
		parsed[i] = ref{owner, name}
	}
	path, err := exec.LookPath(command[0])
	if err != nil {
		code := exitCommandNotFound
		if !errors.Is(err, exec.ErrNotFound) && !errors.Is(err, fs.ErrNotExist) {
			code = exitCannotExec
		}
		return &exitError{code: code, err: fmt.Errorf("acquire: %w", err)}
	}

	c, err := dial()
	if err != nil {
		return err
	}
	// Bare fds, never *os.File: os.File.Fd would switch a non-blocking
	// open file description to blocking for every holder.
	fds, names := inheritedFDs()
	for _, r := range parsed {
		fd, err := c.AcquireFDWait(r.owner, r.name, wait)
		if err != nil {
			if optional && (errors.Is(err, client.ErrNotFound) || errors.Is(err, client.ErrPermissionDenied)) {
				fmt.Fprintf(cmd.ErrOrStderr(), "capd: skipping %s\n", escape(err.Error()))
				continue
			}
			c.Close()
			for _, fd := range fds {
				linux.Close(fd)
			}
			return err
		}
		fds = append(fds, fd)
		names = append(names, r.name)
	}
	c.Close()

	env := make([]string, 0, len(os.Environ())+3)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "LISTEN_PIDFDID":
		default:
			env = append(env, kv)
		}
	}
	if len(fds) > 0 {
		env = append(env,
			"LISTEN_FDS="+strconv.Itoa(len(fds)),
			"LISTEN_FDNAMES="+strings.Join(names, ":"),
			"LISTEN_PID="+strconv.Itoa(os.Getpid()))
	}
	err = linux.ExecWithFDs(path, command, env, fds, privateProc)
	// Only reached on failure, on a thread whose fd table was rearranged:
	// report on fd 2 (untouched) and exit at once.
	fmt.Fprintf(os.Stderr, "capd: acquire: %v\n", err)
	os.Exit(exitCannotExec)
	return nil
}

// inheritedFDs returns the fds passed to capd itself by socket activation
// (LISTEN_PID is this process) and their names, "unknown" where
// LISTEN_FDNAMES has none, as sd_listen_fds_with_names(3) reads them. Fds
// that are not open are left out.
func inheritedFDs() (fds []int, names []string) {
	files, _ := activation.Files()
	for _, f := range files {
		if linux.FDOpen(f.FD) {
			fds, names = append(fds, f.FD), append(names, f.Name)
		}
	}
	return fds, names
}

// spanUnits are systemd's time span units (systemd.time(7)) that Go's
// durations spell otherwise, longest first.
var spanUnits = strings.NewReplacer("minutes", "m", "minute", "m", "min", "m", "msec", "ms", "usec", "us",
	"seconds", "s", "second", "s", "sec", "s", "hours", "h", "hour", "h", "hr", "h")

// parseSpan reads a duration as Go writes it (1m30s) or as systemd does
// (1min 30s, 2h, 500msec), so that a unit's timeouts can be copied.
func parseSpan(s string) (time.Duration, error) {
	return time.ParseDuration(spanUnits.Replace(strings.ReplaceAll(s, " ", "")))
}
