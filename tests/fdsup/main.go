// Command fdsup is a test stand-in for the part of systemd that capd's
// agent uses, for machines without systemd (a VM whose initramfs has only
// busybox). It is not a supervisor for production: it keeps no state on
// disk, trusts its own user, and implements only what the agent needs.
//
//	fdsup -notify PATH [-max N] [-restart-sec D] [-stop-timeout D] [-cgroup DIR] -- agent [args...]
//
// It binds a unixgram socket at PATH (the agent's NOTIFY_SOCKET, with
// SO_PASSCRED) and runs the agent with NOTIFY_SOCKET=PATH and FDSTORE=N
// (as systemd >= 254 tells a service its FileDescriptorStoreMax=). Like a
// Type=notify, NotifyAccess=main, Restart=always unit with
// FileDescriptorStoreMax=N (systemd 252's service.c), it
//   - accepts notifications from the agent's pid only;
//   - keeps the fds of FDSTORE=1 under FDNAME= ("stored" when missing or
//     invalid), several under one name if sent so, but never a second copy
//     of an open file description already stored (kcmp), nor more than N
//     (the rest are closed and logged); fds are never polled (FDPOLL=0);
//   - drops every fd named FDNAME= on FDSTOREREMOVE=1;
//   - closes every other fd that comes with a notification (BARRIER=1);
//   - restarts the agent -restart-sec after it exited, whatever its exit,
//     passing the stored fds, newest first, as fds 3.. with LISTEN_FDS,
//     LISTEN_FDNAMES and LISTEN_PID (set by "fdsup shim", a re-exec of this
//     binary that is the agent's pid, then execs the agent);
//   - with -cgroup, runs the agent in that cgroup v2 directory and empties
//     it (cgroup.kill) after each exit, as KillMode=control-group does.
//
// Events go to stdout, one line each, for tests to wait on:
//
//	start pid=P fds=N      the agent started with N stored fds
//	ready pid=P            READY=1 (at start, and at the end of a reload)
//	reloading pid=P        RELOADING=1
//	stopping pid=P         STOPPING=1
//	exit pid=P code=C      or signal=SIGNAME: the agent is gone
//	store n=N names=A:B    on SIGUSR1: the fd store, in LISTEN_FDNAMES order
//
// SIGTERM or SIGINT stops it: SIGTERM to the agent, SIGKILL after
// -stop-timeout, then every stored fd is closed and the socket removed.
// Exit codes: 0 stopped by a signal, 1 error, 2 usage.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// The notification limits of systemd 252 (NOTIFY_BUFFER_MAX, NOTIFY_FD_MAX).
const (
	maxMessage = 4096
	maxFDs     = 768
)

// barrier is what fdsup sends itself to learn that every notification
// queued before it was handled.
const barrier = "FDSUP_BARRIER=1"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "shim" {
		err := shim(os.Args[2:])
		fmt.Fprintln(os.Stderr, "fdsup shim:", err)
		os.Exit(1)
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fdsup:", err)
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: fdsup -notify PATH [flags] -- agent [args...]")

type storedFD struct {
	name string
	fd   int // owned by the store
}

type note struct {
	pid  int32
	text string
	fds  []int // owned by the note until handled
}

type sup struct {
	log   *slog.Logger
	max   int
	store []storedFD // oldest first
	main  int        // the pid notifications are accepted from; 0: none
}

func run(args []string) error {
	fs := flag.NewFlagSet("fdsup", flag.ContinueOnError)
	notify := fs.String("notify", "", "path of the notification socket to create (NOTIFY_SOCKET)")
	max := fs.Int("max", 4096, "fds the store keeps (FileDescriptorStoreMax=), also passed as $FDSTORE")
	delay := fs.Duration("restart-sec", 100*time.Millisecond, "wait this long before restarting the agent (RestartSec=)")
	stopTimeout := fs.Duration("stop-timeout", 10*time.Second, "SIGKILL the agent this long after SIGTERM (TimeoutStopSec=)")
	cg := fs.String("cgroup", "", "cgroup v2 directory to run the agent in, emptied after each exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if *notify == "" || len(argv) == 0 || *max < 0 {
		return errUsage
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	os.Remove(*notify) // a stale socket of an earlier run
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: *notify, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer os.Remove(*notify)
	defer conn.Close()
	if err := setPassCred(conn); err != nil {
		return err
	}
	s := &sup{log: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("prog", "fdsup"), max: *max}
	defer s.closeAll()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGUSR1)
	msgs := make(chan note)
	go s.read(conn, msgs)

	env := []string{"NOTIFY_SOCKET=" + *notify, "FDSTORE=" + strconv.Itoa(*max)}
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "NOTIFY_SOCKET", "FDSTORE", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "LISTEN_PIDFDID":
		default:
			env = append(env, kv)
		}
	}
	shimArgs := append([]string{self, "shim", "-cgroup", *cg, "--"}, argv...)
	var (
		child    int
		exited   = make(chan *os.ProcessState, 1)
		restart  <-chan time.Time
		kill     <-chan time.Time
		stopping bool
	)
	start := func() {
		names, fds := s.passed()
		e := env
		if len(fds) > 0 {
			e = append(slices.Clip(env), "LISTEN_FDS="+strconv.Itoa(len(fds)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
		}
		// syscall.ForkExec, not os/exec: ExtraFiles' Fd() would clear
		// O_NONBLOCK on the stored open file descriptions.
		files := append([]uintptr{0, 1, 2}, fds...)
		pid, err := syscall.ForkExec(self, shimArgs, &syscall.ProcAttr{Env: e, Files: files})
		if err != nil {
			s.log.Error("start the agent; retrying", "err", err)
			restart = time.After(*delay)
			return
		}
		child, s.main = pid, pid
		fmt.Printf("start pid=%d fds=%d\n", pid, len(fds))
		p, _ := os.FindProcess(pid)
		go func() { st, _ := p.Wait(); exited <- st }()
	}
	start()
	for {
		select {
		case m := <-msgs:
			s.handle(m)
		case st := <-exited:
			s.drain(*notify, msgs) // what the agent sent before it died
			if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				fmt.Printf("exit pid=%d signal=%s\n", child, unix.SignalName(ws.Signal()))
			} else {
				fmt.Printf("exit pid=%d code=%d\n", child, st.ExitCode())
			}
			child, s.main, kill = 0, 0, nil
			if *cg != "" {
				emptyCgroup(s.log, *cg)
			}
			if stopping {
				return nil
			}
			restart = time.After(*delay)
		case <-restart:
			restart = nil
			start()
		case <-kill:
			unix.Kill(child, unix.SIGKILL)
		case sig := <-sigs:
			if sig == unix.SIGUSR1 {
				names, _ := s.passed()
				fmt.Printf("store n=%d names=%s\n", len(names), strings.Join(names, ":"))
				continue
			}
			if child == 0 {
				return nil
			}
			if !stopping {
				stopping = true
				unix.Kill(child, unix.SIGTERM)
				kill = time.After(*stopTimeout)
			}
		}
	}
}

// read passes every notification on conn to out until conn is closed.
func (s *sup) read(conn *net.UnixConn, out chan<- note) {
	buf := make([]byte, maxMessage+1)
	oob := make([]byte, unix.CmsgSpace(4*maxFDs)+unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob) // MSG_CMSG_CLOEXEC
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			s.log.Error("receive a notification", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		m := note{pid: -1, text: string(buf[:n])}
		cmsgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		for _, c := range cmsgs {
			if c.Header.Level != unix.SOL_SOCKET {
				continue
			}
			switch c.Header.Type {
			case unix.SCM_RIGHTS:
				fds, err := unix.ParseUnixRights(&c)
				m.fds = append(m.fds, fds...)
				perr = errors.Join(perr, err)
			case unix.SCM_CREDENTIALS:
				if cred, err := unix.ParseUnixCredentials(&c); err == nil {
					m.pid = cred.Pid
				}
			}
		}
		switch {
		case perr != nil, flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0, n > maxMessage, m.pid < 0:
			s.log.Warn("malformed notification; ignored", "bytes", n, "flags", flags, "fds", len(m.fds), "err", perr)
			closeFDs(m.fds)
			continue
		}
		out <- m
	}
}

// handle acts on one notification and closes the fds it did not store.
func (s *sup) handle(m note) {
	defer closeFDs(m.fds)
	if int(m.pid) != s.main || s.main == 0 {
		if int(m.pid) != os.Getpid() || m.text != barrier {
			s.log.Warn("notification not from the agent's pid; ignored", "pid", m.pid, "main", s.main, "fds", len(m.fds))
		}
		return
	}
	tags := strings.Split(m.text, "\n")
	has := func(tag string) bool { return slices.Contains(tags, tag) }
	name, named := "", false
	for _, t := range tags {
		if v, ok := strings.CutPrefix(t, "FDNAME="); ok {
			name, named = v, true
			break
		}
	}
	for _, ev := range []string{"READY", "RELOADING", "STOPPING"} {
		if has(ev + "=1") {
			fmt.Printf("%s pid=%d\n", strings.ToLower(ev), m.pid)
		}
	}
	if has("FDSTOREREMOVE=1") {
		if !named || !validName(name) {
			s.log.Warn("FDSTOREREMOVE=1 without a valid FDNAME=; ignored", "name", name)
		} else {
			s.remove(name)
		}
	}
	if !has("FDSTORE=1") {
		return
	}
	if !named || !validName(name) {
		name = "stored"
	}
	for i, fd := range m.fds {
		if len(s.store) >= s.max {
			s.log.Warn("fd store full (FileDescriptorStoreMax); closing the remaining fds", "max", s.max, "name", name, "closed", len(m.fds)-i)
			return
		}
		if s.has(fd) {
			s.log.Info("suppressing a duplicate fd, as systemd does", "name", name)
			continue
		}
		s.store = append(s.store, storedFD{name: name, fd: fd})
		m.fds[i] = -1
	}
}

// has reports whether the store holds fd's open file description.
func (s *sup) has(fd int) bool {
	for _, st := range s.store {
		if same, err := linux.Kcmp(os.Getpid(), os.Getpid(), st.fd, fd); err == nil && same {
			return true
		}
	}
	return false
}

func (s *sup) remove(name string) {
	s.store = slices.DeleteFunc(s.store, func(st storedFD) bool {
		if st.name == name {
			unix.Close(st.fd)
			return true
		}
		return false
	})
}

// passed returns the store in the order systemd passes it: newest first.
func (s *sup) passed() (names []string, fds []uintptr) {
	for i := len(s.store) - 1; i >= 0; i-- {
		names, fds = append(names, s.store[i].name), append(fds, uintptr(s.store[i].fd))
	}
	return names, fds
}

func (s *sup) closeAll() {
	for _, st := range s.store {
		unix.Close(st.fd)
	}
	s.store = nil
}

// drain handles the notifications queued before now: it sends itself a
// barrier and handles everything up to it.
func (s *sup) drain(path string, msgs <-chan note) {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err == nil {
		_, err = c.Write([]byte(barrier))
		c.Close()
	}
	if err != nil {
		s.log.Error("barrier on the notification socket", "err", err)
		return
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m := <-msgs:
			if int(m.pid) == os.Getpid() && m.text == barrier {
				return
			}
			s.handle(m)
		case <-timeout:
			s.log.Error("barrier on the notification socket not seen in 5s")
			return
		}
	}
}

// validName is systemd's fdname_is_valid: 1 to 255 printable ASCII
// characters other than ':'.
func validName(n string) bool {
	if n == "" || len(n) > 255 {
		return false
	}
	for i := 0; i < len(n); i++ {
		if n[i] < ' ' || n[i] > '~' || n[i] == ':' {
			return false
		}
	}
	return true
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func setPassCred(conn *net.UnixConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_PASSCRED", serr)
}

// emptyCgroup kills what is left in the cgroup v2 directory dir and waits
// up to 5s until it is empty.
func emptyCgroup(log *slog.Logger, dir string) {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		log.Error("empty the agent's cgroup", "err", err)
		return
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.events")); err != nil || strings.Contains(string(b), "populated 0") {
			return
		}
	}
	log.Error("the agent's cgroup is still populated 5s after cgroup.kill", "cgroup", dir)
}

// shim is the agent's process before it execs the agent: it moves into
// the cgroup, if any, and sets LISTEN_PID to its pid (which exec keeps)
// when fds were passed. It returns only on failure.
func shim(args []string) error {
	fs := flag.NewFlagSet("fdsup shim", flag.ContinueOnError)
	cg := fs.String("cgroup", "", "cgroup v2 directory to move into")
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 {
		return errUsage
	}
	if *cg != "" {
		if err := os.WriteFile(filepath.Join(*cg, "cgroup.procs"), []byte("0"), 0); err != nil {
			return fmt.Errorf("enter cgroup: %w", err)
		}
	}
	if os.Getenv("LISTEN_FDS") != "" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return os.NewSyscallError("execve", unix.Exec(path, argv, os.Environ()))
}
