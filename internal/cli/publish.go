package cli

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/activation"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// Publish is capd publish: its flags and what it does.
type Publish struct {
	FD        int
	Opts      client.PublishOptions
	TTL       time.Duration
	Replace   bool
	ListenFDs bool
	changed   func(string) bool
}

// Flags defines publish's flags on fs.
func (p *Publish) Flags(fs *pflag.FlagSet) {
	fs.IntVar(&p.FD, "fd", 0, "the fd to publish under a NAME without =FD, as the caller passed it to capd (default stdin)")
	fs.BoolVar(&p.ListenFDs, "listen-fds", false, "publish the fds passed to capd by socket activation under their LISTEN_FDNAMES names")
	fs.BoolVar(&p.Opts.Pin, "pin", false, "keep the entries when the owner's cgroup empties")
	fs.DurationVar(&p.TTL, "ttl", 0, "revoke the entries after this long (e.g. 30s)")
	fs.StringArrayVar(&p.Opts.Allow, "allow", nil, "identity pattern that may acquire the entries (repeatable)")
	fs.BoolVar(&p.Replace, "replace", false, "replace live entries of the same names atomically")
	fs.BoolVar(&p.Opts.PerConsumer, "per-consumer", false, "give each consumer its own open file description (memfds, files, directories as detached mounts), which can be checked and revoked alone")
	fs.StringSliceVar(&p.Opts.Restrict, "restrict", nil, "what each consumer's grant withholds: read-only, and for directories nosuid, nodev, noexec (comma-separated; implies --per-consumer)")
	fs.BoolVar(&p.Opts.KeepPublisher, "keep-publisher", false, "the publisher's own cgroup keeps using the file after a revoke the kernel enforces")
	p.changed = fs.Changed
}

// Args checks publish's arguments; dash is where '--' was (or -1).
func (p *Publish) Args(args []string, dash int) error {
	names := args
	if dash >= 0 {
		names = args[:dash]
		if dash == len(args) {
			return UsageErr("missing COMMAND after '--'")
		}
	}
	if len(names) == 0 && !p.ListenFDs {
		return UsageErr("name at least one NAME, or use --listen-fds")
	}
	return nil
}

// Run publishes the NAMEs of args[:dash] (all of args without '--') and
// then executes args[dash:], if given, in capd's place.
func (p *Publish) Run(stderr io.Writer, args []string, dash int) error {
	names, command := args, []string(nil)
	if dash >= 0 {
		names, command = args[:dash], args[dash:]
	}
	if p.changed != nil && p.changed("ttl") && p.TTL < time.Millisecond {
		return UsageErr("--ttl must be at least 1ms, not %v", p.TTL)
	}
	todo, err := publishList(names, p.FD, p.changed != nil && p.changed("fd"), p.ListenFDs)
	if err != nil {
		return err
	}
	var path string
	if command != nil {
		if path, err = lookPath("publish", command[0]); err != nil {
			return err
		}
	}
	opts := p.Opts
	opts.TTL, opts.Replace = p.TTL, p.Replace
	c, err := Dial()
	if err != nil {
		return err
	}
	for _, t := range todo {
		if err := c.Publish(t.name, t.f, &opts); err != nil {
			c.Close()
			return err
		}
	}
	c.Close()
	if command == nil {
		if !opts.Pin {
			warnLastProcess(stderr)
		}
		return nil
	}
	// Every fd the caller passed stays open across exec (none carries
	// FD_CLOEXEC), and so does the environment.
	err = linux.Execve(path, command, os.Environ())
	return &ExitError{Code: ExitCannotExec, Err: fmt.Errorf("publish: %w", err)}
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
			return UsageErr("%v", err)
		}
		if seen[name] {
			return UsageErr("%s is named twice", name)
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
		return nil, UsageErr("%d NAMEs without =FD: give each its fd as NAME=FD", plain)
	}
	for _, a := range names {
		name, v, ok := strings.Cut(a, "=")
		n := fd
		if ok {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < 0 {
				return nil, UsageErr("%s: %q is not an fd number", a, v)
			}
		} else if fdSet && fd < 0 {
			return nil, UsageErr("--fd must be a file descriptor number, not %d", fd)
		}
		if err := add(name, n); err != nil {
			return nil, err
		}
	}
	if listen {
		files, named := activation.Files()
		if files == nil {
			return nil, UsageErr("--listen-fds: capd was not socket-activated (LISTEN_PID is not its pid, or LISTEN_FDS passes no fd)")
		}
		if !named {
			return nil, UsageErr("--listen-fds: LISTEN_FDNAMES does not name the %d fds LISTEN_FDS passes: set FileDescriptorName= in the .socket", len(files))
		}
		for _, f := range files {
			if f.Name == "unknown" || f.Name == "stored" {
				return nil, UsageErr("--listen-fds: fd %d has no name of its own (%q): set FileDescriptorName= in the .socket", f.FD, f.Name)
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
		fmt.Fprintf(w, "capd: warning: capd is the last process of %s: its unpinned entries vanish when capd exits (publish with --pin, or chain-load the daemon with '-- COMMAND')\n", Escape(owner))
	}
}

// inheritedFD returns fd n if the caller passed it to capd. Fds that capd's
// own runtime opened carry FD_CLOEXEC, while an fd inherited across exec
// cannot: that tells a caller's fd from, say, the Go runtime's epoll fd.
func inheritedFD(n int) (*os.File, error) {
	if n < 0 {
		return nil, UsageErr("--fd must be a file descriptor number, not %d", n)
	}
	flags, err := linux.FcntlGetFD(n)
	if err != nil || flags&unix.FD_CLOEXEC != 0 {
		return nil, UsageErr("fd %d is not open in the caller (pass it to capd, e.g. '%d<file')", n, n)
	}
	return os.NewFile(uintptr(n), fmt.Sprintf("fd %d", n)), nil
}
