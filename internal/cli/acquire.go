package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/activation"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// Acquire is capd acquire: its flags and what it does.
type Acquire struct {
	Optional    bool
	PrivateProc bool
	Verbose     bool
	Wait        string
	waitSet     func() bool
}

// Flags defines acquire's flags on fs.
func (a *Acquire) Flags(fs *pflag.FlagSet) {
	fs.BoolVar(&a.Optional, "optional", false, "skip entries that are absent or not granted instead of failing")
	fs.StringVar(&a.Wait, "wait", "", "wait up to this long for entries not yet published (no value: forever)")
	fs.Lookup("wait").NoOptDefVal = "forever"
	fs.BoolVar(&a.PrivateProc, "private-proc", false, "run COMMAND in its own mount namespace with a /proc that hides other users' processes (hidepid=invisible)")
	fs.BoolVarP(&a.Verbose, "verbose", "v", false, "say on stderr what each fd is: the entry's own description or a grant (its id, restrictions, parent), and what a revoke does to it")
	a.waitSet = func() bool { return fs.Changed("wait") }
}

// Args checks acquire's arguments; dash is where '--' was (or -1).
func (a *Acquire) Args(args []string, dash int) error {
	switch {
	case dash < 0:
		return UsageErr("missing '-- COMMAND' (see 'capd acquire --help')")
	case dash == 0:
		return UsageErr("name at least one OWNER:NAME before '--'")
	case dash == len(args):
		return UsageErr("missing COMMAND after '--'")
	}
	return nil
}

// Run acquires args[:dash] and executes args[dash:] with them; it returns
// only on failure.
func (a *Acquire) Run(stderr io.Writer, args []string, dash int) error {
	timeout := time.Duration(0)
	if a.waitSet != nil && a.waitSet() {
		timeout = -1
		if a.Wait != "forever" {
			d, err := ParseSpan(a.Wait)
			if err != nil || d < 0 {
				return UsageErr("--wait=%s: want a duration such as 30s, 1min or 1m30s, or no value to wait forever", a.Wait)
			}
			timeout = d
		}
	}
	return acquireExec(stderr, args[:dash], args[dash:], a.Optional, a.PrivateProc, a.Verbose, timeout)
}

// acquireExec acquires refs, waiting up to wait for entries not yet
// published (0: not at all, < 0: forever), and executes command.
func acquireExec(stderr io.Writer, refs, command []string, optional, privateProc, verbose bool, wait time.Duration) error {
	type ref struct{ owner, name string }
	parsed := make([]ref, len(refs))
	for i, r := range refs {
		owner, name, err := proto.SplitRef(r)
		if err != nil {
			return UsageErr("%v", err)
		}
		parsed[i] = ref{owner, name}
	}
	path, err := lookPath("acquire", command[0])
	if err != nil {
		return err
	}

	c, err := Dial()
	if err != nil {
		return err
	}
	// Bare fds, never *os.File: os.File.Fd would switch a non-blocking
	// open file description to blocking for every holder.
	fds, names := inheritedFDs()
	for _, r := range parsed {
		fd, g, err := c.AcquireGrantWait(r.owner, r.name, wait)
		if err != nil {
			if optional && (errors.Is(err, client.ErrNotFound) || errors.Is(err, client.ErrPermissionDenied)) {
				fmt.Fprintf(stderr, "capd: skipping %s\n", Escape(err.Error()))
				continue
			}
			c.Close()
			for _, fd := range fds {
				linux.Close(fd)
			}
			return err
		}
		if verbose {
			describeAcquired(stderr, r.owner+":"+r.name, len(fds)+3, g)
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
	os.Exit(ExitCannotExec)
	return nil
}

// describeAcquired says what the fd that will be n in COMMAND is.
func describeAcquired(w io.Writer, ref string, n int, g *client.AcquiredGrant) {
	what := "the entry's own description"
	if g.Grant != "" {
		what = "grant " + g.Grant
		if g.Parent != "" {
			what += ", delegated from " + g.Parent
		}
		if len(g.Restrict) > 0 {
			what += " (" + strings.Join(g.Restrict, ",") + ")"
		}
	}
	fmt.Fprintf(w, "capd: fd %d: %s: %s; revocation %s\n", n, Escape(ref), what, g.Enforcement)
}

// lookPath finds COMMAND as exec does, failing with exit code 127 when
// there is none and 126 when it cannot be run.
func lookPath(what, file string) (string, error) {
	path, err := exec.LookPath(file)
	if err != nil {
		code := ExitCommandNotFound
		if !errors.Is(err, exec.ErrNotFound) && !errors.Is(err, fs.ErrNotExist) {
			code = ExitCannotExec
		}
		return "", &ExitError{Code: code, Err: fmt.Errorf("%s: %w", what, err)}
	}
	return path, nil
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
