// Package hooks is the OCI hook behind `capd hook`: at createRuntime (or
// prestart) it registers an annotated container with the agent and makes
// the agent and a capd binary reachable inside it; at poststop it
// unregisters it.
//
// Inside the container, /run/capd is a small read-only tmpfs holding
// capd.sock (a bind mount of the agent's socket) and capd (a read-only
// bind mount of this binary), so the workload runs `/run/capd/capd acquire
// OWNER:NAME -- CMD` exactly as on the host. The mounts are made in the
// container's mount namespace, entered through a pidfd of its init
// process (package nsenter), before the runtime pivots into the root
// filesystem; paths inside the root are resolved with RESOLVE_IN_ROOT so
// that symlinks in the image cannot redirect them.
//
// Fd ownership: every fd the hook opens (the pidfd, detached mounts, path
// fds) is closed before Run returns.
package hooks

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/nsenter"
	"github.com/capd-dev/capd/oci"
)

// Inside the container.
const (
	Dir    = "/run/capd"
	Socket = Dir + "/capd.sock"
	Binary = Dir + "/capd"
)

// FullName is capd-full, the binary beside capd that runs every command
// capd does not run itself; containers get it beside capd when the host
// has it.
const FullName = "capd-full"

// cloneFull clones capd-full, beside this binary, as a detached mount
// tree, or returns -1 when there is none.
func cloneFull() (int, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return -1, err
	}
	fd, err := linux.CloneTree(filepath.Join(filepath.Dir(exe), FullName), true)
	if errors.Is(err, unix.ENOENT) {
		return -1, nil
	}
	return fd, err
}

// Options configure Run.
type Options struct {
	// Socket is the agent's socket on the host.
	Socket string
	// Stdin carries the runtime-spec State; Stderr takes warnings, which
	// runtimes show when a hook fails (and log otherwise).
	Stdin  io.Reader
	Stderr io.Writer
	// HardenAll gives every container, annotated or not, the hidden-process
	// /proc (hooks.d then runs the hook for all containers).
	HardenAll bool
	// Timeout bounds the whole conversation with the agent in one hook
	// run (connecting, registering, unregistering); 0 means no bound. An
	// agent that does not answer in time counts as unreachable.
	Timeout time.Duration
}

// Run handles one hook invocation. Containers without the io.capd.acquire
// annotation are left alone at once. Errors abort container creation: an
// unreachable agent or a refused entry only does so for containers
// annotated io.capd.required=true; otherwise the hook warns and the
// container starts without them.
func Run(o Options) error {
	st, err := oci.ReadState(o.Stdin)
	if err != nil {
		return err
	}
	req, err := oci.ParseRequest(st.ID, st.Annotations)
	if errors.Is(err, oci.ErrNotOurs) {
		if o.HardenAll && (st.Status == "creating" || st.Status == "created") && st.Pid > 0 {
			return hardenOnly(st.ID, st.Pid, st.Bundle)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("container %s: %w", st.ID, err)
	}
	switch st.Status {
	case "creating", "created":
		return create(o, req, st.Pid, st.Bundle)
	case "stopped":
		return stop(o, req)
	}
	return nil // other stages: nothing to do
}

func (o Options) warn(format string, args ...any) {
	fmt.Fprintf(o.Stderr, "capd hook: warning: "+format+"\n", args...)
}

// dial connects to the agent with the deadline for the whole
// conversation of this hook run.
func (o Options) dial() (*client.Client, error) {
	if o.Timeout <= 0 {
		return client.Dial(o.Socket)
	}
	return client.DialDeadline(o.Socket, time.Now().Add(o.Timeout))
}

// agentErr says what a failed conversation with the agent about container
// id means, naming a timeout for what it is.
func (o Options) agentErr(id string, err error) error {
	if errors.Is(err, client.ErrTimeout) {
		return fmt.Errorf("container %s: the capd agent at %s did not answer within the timeout of %v (capd hook --timeout): %w", id, o.Socket, o.Timeout, err)
	}
	return fmt.Errorf("container %s: %w", id, err)
}

func create(o Options, req *oci.Request, pid int, bundle string) error {
	if pid <= 0 {
		return fmt.Errorf("container %s: the state has no pid: run capd hook at createRuntime or prestart", req.ID)
	}
	// Hold the init process at once: from here on a reuse of its pid
	// cannot go unnoticed (the agent reads the cgroup through the pidfd).
	pidfd, err := linux.PidfdOpen(pid)
	if err != nil {
		return fmt.Errorf("container %s: %w", req.ID, err)
	}
	defer linux.Close(pidfd)
	b, err := oci.ReadBundle(bundle)
	if err != nil {
		return fmt.Errorf("container %s: %w", req.ID, err)
	}
	// soft reports a failure that aborts creation only when required.
	soft := func(err error) error {
		if req.Required {
			return err
		}
		o.warn("%v (the container starts without capd; annotate %s=true to make this fatal)", err, oci.AnnotationRequired)
		return nil
	}
	c, err := o.dial()
	if err != nil {
		return soft(o.agentErr(req.ID, err))
	}
	defer c.Close()
	refs := make([]client.Ref, len(req.Refs))
	for i, r := range req.Refs {
		refs[i] = client.Ref(r)
	}
	_, results, err := c.Register(&client.Registration{ID: req.ID, Name: req.Name, Refs: refs, Required: req.Required}, pidfd)
	if errors.Is(err, client.ErrTimeout) {
		// The agent may still act on the request when it wakes up; the
		// container's init exiting (or poststop) unregisters it then.
		return soft(o.agentErr(req.ID, err))
	}
	if err != nil {
		return soft(err)
	}
	for _, r := range results {
		if r.Err != nil {
			o.warn("container %s: %v", req.ID, r.Err)
		}
	}
	if err := expose(pidfd, b, o.Socket); err != nil {
		err = fmt.Errorf("container %s: make capd reachable at %s: %w", req.ID, Dir, err)
		if req.Required {
			c.Unregister(req.ID)
		}
		return soft(err)
	}
	return nil
}

func stop(o Options, req *oci.Request) error {
	c, err := o.dial()
	if err != nil {
		o.warn("%v", o.agentErr(req.ID, err))
		return nil
	}
	defer c.Close()
	if err := c.Unregister(req.ID); errors.Is(err, client.ErrTimeout) {
		o.warn("%v (the agent unregisters the container when it sees its init exit)", o.agentErr(req.ID, err))
	} else if err != nil && !errors.Is(err, client.ErrNotFound) {
		o.warn("%v", err)
	}
	return nil
}

// hardenOnly gives an unannotated container the hidden-process /proc.
func hardenOnly(id string, pid int, bundle string) error {
	pidfd, err := linux.PidfdOpen(pid)
	if err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	defer linux.Close(pidfd)
	b, err := oci.ReadBundle(bundle)
	if err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	hostProc, err := procDev()
	if err != nil {
		return err
	}
	return nsenter.MountNS(pidfd, func() error {
		rootfd, err := linux.Open(b.Root, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return err
		}
		defer linux.Close(rootfd)
		if err := hideProcesses(rootfd, b, hostProc); err != nil {
			return fmt.Errorf("container %s: %w", id, err)
		}
		return nil
	})
}

// hideProcesses reconfigures the container's procfs (already mounted at
// root/proc by the runtime, in the container's pid namespace) with
// hidepid=invisible, and subset=pid unless the runtime still has sysctls
// to write (runc writes them after the hooks, through /proc/sys).
//
// procfs options belong to the procfs instance, which every mount of it
// shares: a container whose /proc is a bind of the host's (or shares the
// host's instance otherwise) is refused rather than changing the host.
func hideProcesses(rootfd int, b *oci.Bundle, hostProc uint64) error {
	proc, err := linux.OpenInRoot(rootfd, "proc", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("the container has no /proc: %w", err)
	}
	defer linux.Close(proc)
	var st unix.Stat_t
	if err := linux.Fstat(proc, &st); err != nil {
		return fmt.Errorf("the container's /proc: %w", err)
	}
	if st.Dev == hostProc {
		return errors.New("the container's /proc is the host's procfs: not hiding processes there (it would hide them on the host)")
	}
	if err := linux.HideProcesses(proc, !b.Sysctls); err != nil {
		return fmt.Errorf("hide processes in /proc: %w", err)
	}
	return nil
}

// procDev returns the device of the runtime's own /proc.
func procDev() (uint64, error) {
	var st unix.Stat_t
	if err := linux.Stat("/proc", &st); err != nil {
		return 0, err
	}
	return st.Dev, nil
}

// expose mounts, in the mount namespace of the process behind pidfd, a
// tmpfs at root/run/capd with the agent's socket and this binary bound
// into it, and hides other users' processes in the container's /proc.
func expose(pidfd int, b *oci.Bundle, socket string) error {
	root := b.Root
	hostProc, err := procDev()
	if err != nil {
		return err
	}
	// Clone the trees in our own namespace, where the paths make sense.
	sock, err := linux.CloneTree(socket, false)
	if err != nil {
		return err
	}
	defer linux.Close(sock)
	exe, err := linux.CloneTree("/proc/self/exe", true)
	if err != nil {
		return err
	}
	defer linux.Close(exe)
	files := []struct {
		name string
		mode uint32
		tree int
	}{{"capd.sock", 0o600, sock}, {"capd", 0o755, exe}}
	// capd-full, beside this binary, runs every command but the start-up
	// ones; a container without it still acquires and publishes.
	if full, err := cloneFull(); err != nil {
		return err
	} else if full >= 0 {
		defer linux.Close(full)
		files = append(files, struct {
			name string
			mode uint32
			tree int
		}{FullName, 0o755, full})
	}
	tmpfs, err := linux.NewTmpfs("0755", "64k")
	if err != nil {
		return err
	}
	defer linux.Close(tmpfs)
	return nsenter.MountNS(pidfd, func() error {
		var fds []int
		defer func() {
			for _, fd := range fds {
				linux.Close(fd)
			}
		}()
		open := func(fd int, err error) (int, error) {
			if err == nil {
				fds = append(fds, fd)
			}
			return fd, err
		}
		rootfd, err := open(linux.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0))
		if err != nil {
			return err
		}
		run, err := open(linux.MkdirInRoot(rootfd, "run", 0o755))
		if err != nil {
			return err
		}
		mnt, err := open(linux.MkdirInRoot(run, "capd", 0o755))
		if err != nil {
			if errors.Is(err, unix.EROFS) {
				return fmt.Errorf("the root filesystem is read-only and has no %s (create it in the image, or mount a tmpfs on /run): %w", Dir, err)
			}
			return err
		}
		// A mount on a shared mount would propagate to its peers, outside
		// the container (a volume mounted shared over /run).
		if shared, err := linux.MountShared(mnt); err != nil {
			return err
		} else if shared {
			return errors.New("/run/capd lies on a mount with shared propagation (a shared volume, or rootfsPropagation shared): mounting there would reach outside the container")
		}
		if err := linux.MoveMountTo(tmpfs, mnt); err != nil {
			return err
		}
		dir, err := open(linux.OpenInRoot(run, "capd", unix.O_PATH|unix.O_DIRECTORY))
		if err != nil {
			return err
		}
		for _, f := range files {
			target, err := open(linux.CreateAt(dir, f.name, f.mode))
			if err != nil {
				return err
			}
			if err := linux.MoveMountTo(f.tree, target); err != nil {
				return fmt.Errorf("mount %s: %w", f.name, err)
			}
		}
		if err := linux.SetReadOnly(dir); err != nil {
			return err
		}
		return hideProcesses(rootfd, b, hostProc)
	})
}
