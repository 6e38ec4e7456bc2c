package main

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

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/activation"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

func newPublishCmd() *cobra.Command {
	var (
		fd        int
		opts      client.PublishOptions
		ttl       time.Duration
		replace   bool
		listenFDs bool
	)
	cmd := &cobra.Command{
		Use:   "publish NAME[=FD]... [--fd N] [--listen-fds] [--pin] [--ttl DURATION] [--allow PATTERN]... [--replace] [-- COMMAND [ARG...]]",
		Short: "Store fds of the caller's under names, then optionally run COMMAND",
		Long: `Store a dup of an fd the caller passes to capd under NAME. The entry is owned
by the caller's identity (see 'capd whoami'); other identities can acquire it
as OWNER:NAME when the admin's policy grants it.

Which fd: NAME=FD names it; else --fd N; else stdin (fd 0), so that
'capd publish NAME < FILE' and a unit's StandardInput= work. Several NAMEs
publish several fds (each NAME=FD, or one NAME with --fd or stdin).
--listen-fds publishes the fds systemd passed to capd by socket activation
(LISTEN_FDS, with LISTEN_PID capd's own pid) under their names in
LISTEN_FDNAMES (the .socket's FileDescriptorName=); an fd systemd names
"unknown" or "stored", or a name capd cannot take, is an error.

With '-- COMMAND', capd then executes COMMAND in its place, with every fd
and the environment intact (LISTEN_* included, still meant for the same
pid), as s6-fdholder-store chain-loads: a unit publishes and runs its daemon
in one ExecStart= line. Nothing is executed when a publish fails.

NAME is 1 to 255 letters, digits and . _ - @ + =.
Publishing a name that is already live fails with exit code 6 (exists)
unless --replace is given, which swaps the new fd in atomically.

  --pin            keep the entry when the owner's cgroup empties
  --ttl DURATION   revoke the entry after DURATION (e.g. 30s, 10m): timed
                   authorization
  --allow PATTERN  only identities matching one of these patterns may
                   acquire it (narrows policy, never widens it); globs as in
                   policy: zincati.service, container:web-*, cgroup:/a/*

An unpinned entry lives while its owner's cgroup has processes: published
from a Type=oneshot unit, or any unit whose last process is capd itself, it
vanishes as soon as capd exits. Publish such entries with --pin (capd warns
when it sees that it is its unit's last process), or chain-load the daemon
with '-- COMMAND'.`,
		Example: `  # publish one end of a socketpair held on fd 3
  capd publish zincati-fd --fd 3
  # publish a file for ten minutes, only to zincati
  capd publish report --ttl 10m --allow zincati.service < report.txt
  # a unit publishes its socket-activated fds, then runs its daemon
  ExecStart=/usr/bin/capd publish --listen-fds --pin -- /usr/libexec/rpm-ostreed
  # two fds at once
  capd publish a=3 b=4 3<a.txt 4<b.txt`,
		Args: func(cmd *cobra.Command, args []string) error {
			names := args
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				names = args[:dash]
				if dash == len(args) {
					return usageErr("missing COMMAND after '--'")
				}
			}
			if len(names) == 0 && !listenFDs {
				return usageErr("name at least one NAME, or use --listen-fds")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			names, command := args, []string(nil)
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				names, command = args[:dash], args[dash:]
			}
			if cmd.Flags().Changed("ttl") && ttl < time.Millisecond {
				return usageErr("--ttl must be at least 1ms, not %v", ttl)
			}
			todo, err := publishList(names, fd, cmd.Flags().Changed("fd"), listenFDs)
			if err != nil {
				return err
			}
			var path string
			if command != nil {
				if path, err = exec.LookPath(command[0]); err != nil {
					code := exitCommandNotFound
					if !errors.Is(err, exec.ErrNotFound) && !errors.Is(err, fs.ErrNotExist) {
						code = exitCannotExec
					}
					return &exitError{code: code, err: fmt.Errorf("publish: %w", err)}
				}
			}
			opts.TTL, opts.Replace = ttl, replace
			c, err := dial()
			if err != nil {
				return err
			}
			for _, p := range todo {
				if err := c.Publish(p.name, p.f, &opts); err != nil {
					c.Close()
					return err
				}
			}
			c.Close()
			if command == nil {
				if !opts.Pin {
					warnLastProcess(cmd.ErrOrStderr())
				}
				return nil
			}
			// Every fd the caller passed stays open across exec (none carries
			// FD_CLOEXEC), and so does the environment.
			err = linux.Execve(path, command, os.Environ())
			return &exitError{code: exitCannotExec, err: fmt.Errorf("publish: %w", err)}
		},
	}
	cmd.Flags().IntVar(&fd, "fd", 0, "the fd to publish under a NAME without =FD, as the caller passed it to capd (default stdin)")
	cmd.Flags().BoolVar(&listenFDs, "listen-fds", false, "publish the fds passed to capd by socket activation under their LISTEN_FDNAMES names")
	cmd.Flags().BoolVar(&opts.Pin, "pin", false, "keep the entries when the owner's cgroup empties")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "revoke the entries after this long (e.g. 30s)")
	cmd.Flags().StringArrayVar(&opts.Allow, "allow", nil, "identity pattern that may acquire the entries (repeatable)")
	cmd.Flags().BoolVar(&replace, "replace", false, "replace live entries of the same names atomically")
	return cmd
}

type toPublish struct {
	name string
	f    *os.File
}

// publishList resolves what to publish: NAME=FD pairs, a single NAME with
// --fd or stdin, and with listen the socket-activated fds.
func publishList(names []string, fd int, fdSet, listen bool) ([]toPublish, error) {
	var out []toPublish
	seen := map[string]bool{}
	add := func(name string, n int) error {
		if err := proto.ValidName(name); err != nil {
			return usageErr("%v", err)
		}
		if seen[name] {
			return usageErr("%s is named twice", name)
		}
		seen[name] = true
		f, err := inheritedFD(n)
		if err != nil {
			return err
		}
		out = append(out, toPublish{name, f})
		return nil
	}
	plain := 0
	for _, a := range names {
		if _, _, ok := strings.Cut(a, "="); !ok {
			plain++
		}
	}
	if plain > 1 {
		return nil, usageErr("%d NAMEs without =FD: give each its fd as NAME=FD", plain)
	}
	for _, a := range names {
		name, v, ok := strings.Cut(a, "=")
		n := fd
		if ok {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < 0 {
				return nil, usageErr("%s: %q is not an fd number", a, v)
			}
		} else if fdSet && fd < 0 {
			return nil, usageErr("--fd must be a file descriptor number, not %d", fd)
		}
		if err := add(name, n); err != nil {
			return nil, err
		}
	}
	if listen {
		files, named := activation.Files()
		if files == nil {
			return nil, usageErr("--listen-fds: capd was not socket-activated (LISTEN_PID is not its pid, or LISTEN_FDS passes no fd)")
		}
		if !named {
			return nil, usageErr("--listen-fds: LISTEN_FDNAMES does not name the %d fds LISTEN_FDS passes: set FileDescriptorName= in the .socket", len(files))
		}
		for _, f := range files {
			if f.Name == "unknown" || f.Name == "stored" {
				return nil, usageErr("--listen-fds: fd %d has no name of its own (%q): set FileDescriptorName= in the .socket", f.FD, f.Name)
			}
			if err := add(f.Name, f.FD); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// warnLastProcess warns when capd is the last process of its unit's
// cgroup: an unpinned entry then vanishes when capd exits.
func warnLastProcess(w io.Writer) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	var p string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "0::"); ok {
			p = v
		}
	}
	if p == "" {
		return
	}
	_, owner := cgroup.Owner(p)
	mount, err := cgroup.V2Mountpoint()
	if err != nil || owner == "/" {
		return
	}
	procs, err := cgroup.Procs(mount + owner)
	if err == nil && len(procs) == 1 && procs[0] == os.Getpid() {
		fmt.Fprintf(w, "capd: warning: capd is the last process of %s: its unpinned entries vanish when capd exits (publish with --pin, or chain-load the daemon with '-- COMMAND')\n", escape(owner))
	}
}

// inheritedFD returns fd n if the caller passed it to capd. Fds that capd's
// own runtime opened carry FD_CLOEXEC, while an fd inherited across exec
// cannot: that tells a caller's fd from, say, the Go runtime's epoll fd.
func inheritedFD(n int) (*os.File, error) {
	if n < 0 {
		return nil, usageErr("--fd must be a file descriptor number, not %d", n)
	}
	flags, err := linux.FcntlGetFD(n)
	if err != nil || flags&unix.FD_CLOEXEC != 0 {
		return nil, usageErr("fd %d is not open in the caller (pass it to capd, e.g. '%d<file')", n, n)
	}
	return os.NewFile(uintptr(n), fmt.Sprintf("fd %d", n)), nil
}
