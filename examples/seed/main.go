// Command seed runs capd's seed scenario end to end on this machine, as
// root, and narrates it: an agent on a temporary socket with a temporary
// policy, two service cgroups (rpm-ostreed.service publishes, zincati.service
// consumes), a socketpair end and a memfd token published, both acquired
// through `capd acquire`, the token sent back and verified with kcmp, then
// revoked. It cleans up after itself and exits non-zero if any step does not
// behave as described.
//
// Usage: seed [-capd PATH]   (the roles rpm-ostreed and zincati are internal)
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/client"
)

const policy = `# the admin's policy: zincati may take these two entries of rpm-ostreed
[[grant]]
consumer = "zincati.service"
acquire  = ["rpm-ostreed.service:zincati-fd", "rpm-ostreed.service:foo-op-fd"]
`

func main() {
	var err error
	switch os.Getenv("CAPD_SEED_ROLE") {
	case "rpm-ostreed":
		err = publisher()
	case "zincati":
		err = consumer()
	default:
		err = orchestrate()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "seed: FAILED: %v\n", err)
		os.Exit(1)
	}
}

func say(who, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%-14s %s\n", who, fmt.Sprintf(format, args...))
}

func orchestrate() error {
	capdPath := flag.String("capd", "", "capd binary (default: capd beside this program, else $PATH)")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("the demo makes cgroups and needs root")
	}
	bin, err := findCapd(*capdPath)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	mount, err := cgroup.V2Mountpoint()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "capd-seed")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "capd.sock")
	conf := filepath.Join(dir, "capd.toml")
	if err := os.WriteFile(conf, []byte(policy), 0o644); err != nil {
		return err
	}

	say("demo", "starting capd agent on %s with policy:\n%s", sock, indent(policy))
	agent := exec.Command(bin, "agent", "--config", conf, "--socket", sock)
	agentLog := &strings.Builder{}
	agent.Stderr = agentLog
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() {
		agent.Process.Signal(unix.SIGTERM)
		agent.Wait()
		say("demo", "agent stopped; its log:\n%s", indent(agentLog.String()))
	}()
	if err := waitSocket(sock); err != nil {
		return err
	}

	// A top-level slice as systemd names them: a '-' would say it belongs
	// below another slice, and the units in it would get no unit identity.
	slice := filepath.Join(mount, fmt.Sprintf("capd_seed_%d.slice", os.Getpid()))
	defer removeCgroups(slice)
	cgs := map[string]int{}
	for _, unit := range []string{"rpm-ostreed.service", "zincati.service"} {
		d := filepath.Join(slice, unit)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cgs[unit] = fd
		say("demo", "created cgroup %s", strings.TrimPrefix(d, mount))
	}
	env := append(os.Environ(), "CAPD_SOCKET="+sock)
	inCgroup := func(unit string, cmd *exec.Cmd) *exec.Cmd {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgs[unit]}
		cmd.Env = env
		cmd.Stderr = os.Stderr
		return cmd
	}

	// rpm-ostreed.service: publishes, then waits for zincati's request.
	pub := inCgroup("rpm-ostreed.service", exec.Command(self))
	pub.Env = append(pub.Env, "CAPD_SEED_ROLE=rpm-ostreed")
	toPub, err := pub.StdinPipe()
	if err != nil {
		return err
	}
	fromPubPipe, err := pub.StdoutPipe()
	if err != nil {
		return err
	}
	fromPub := bufio.NewReader(fromPubPipe)
	if err := pub.Start(); err != nil {
		return err
	}
	defer func() { toPub.Close(); pub.Wait() }()
	if err := expectLine(fromPub, "published"); err != nil {
		return fmt.Errorf("publisher: %w", err)
	}

	// zincati.service: capd acquire ... -- seed (role zincati).
	say("demo", "running in zincati.service: capd acquire rpm-ostreed.service:zincati-fd rpm-ostreed.service:foo-op-fd -- zincati")
	con := inCgroup("zincati.service", exec.Command(bin, "acquire", "rpm-ostreed.service:zincati-fd", "rpm-ostreed.service:foo-op-fd", "--", self))
	con.Env = append(con.Env, "CAPD_SEED_ROLE=zincati")
	con.Stdout = os.Stderr
	if err := con.Run(); err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	if err := expectLine(fromPub, "performed"); err != nil {
		return fmt.Errorf("publisher: %w", err)
	}

	// Revoke, then show the old copy is dead and the entry gone.
	fmt.Fprintln(toPub, "revoke")
	if err := expectLine(fromPub, "revoked"); err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	say("demo", "running in zincati.service again: capd acquire rpm-ostreed.service:foo-op-fd -- true")
	again := inCgroup("zincati.service", exec.Command(bin, "acquire", "rpm-ostreed.service:foo-op-fd", "--", "true"))
	again.Stderr = nil
	out, err := again.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(string(out), "not-found") {
		return fmt.Errorf("acquire after revoke: %v %s, want exit 5 not-found", err, out)
	}
	say("zincati", "acquire refused as expected: %s (exit 5)", strings.TrimSpace(string(out)))
	say("demo", "seed scenario complete: publish, acquire, verify, revoke all behaved as designed")
	return nil
}

func publisher() error {
	c, err := client.Dial("")
	if err != nil {
		return err
	}
	defer c.Close()
	me, err := c.Whoami()
	if err != nil {
		return err
	}
	say("rpm-ostreed", "I am %s (cgroup %s), as the agent sees it", me.Name, me.Cgroup)

	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	mine := os.NewFile(uintptr(sp[0]), "zincati-fd (my end)")
	theirs := os.NewFile(uintptr(sp[1]), "zincati-fd")
	defer mine.Close()
	if err := c.Publish("zincati-fd", theirs, nil); err != nil {
		return err
	}
	theirs.Close()
	say("rpm-ostreed", "socketpair(a, b); published b as \"zincati-fd\"")

	tok, err := client.NewToken("foo-op-fd")
	if err != nil {
		return err
	}
	defer tok.Close()
	if err := tok.Publish(c, nil); err != nil {
		return err
	}
	say("rpm-ostreed", "made a sealed memfd token; published it as \"foo-op-fd\"")
	fmt.Println("published")

	// Wait for zincati's request: a message and one fd over zincati-fd.
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := unix.Recvmsg(sp[0], buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return err
	}
	got, err := oneFD(oob[:oobn])
	if err != nil {
		return err
	}
	defer got.Close()
	ok, err := tok.Check(got)
	if err != nil {
		return err
	}
	say("rpm-ostreed", "received request %q with an fd; kcmp says it is my foo-op-fd token: %v", buf[:n], ok)
	if !ok {
		return errors.New("the token sent back does not verify")
	}
	say("rpm-ostreed", "-> performing foo-op for zincati")
	if _, err := mine.Write([]byte("foo-op done")); err != nil {
		return err
	}
	fmt.Println("performed")

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "revoke" {
			continue
		}
		if err := tok.Revoke(c); err != nil {
			return err
		}
		say("rpm-ostreed", "revoked \"foo-op-fd\": closed my copy and the agent's")
		ok, err := tok.Check(got)
		if err != nil {
			return err
		}
		say("rpm-ostreed", "the copy zincati sent earlier still verifies: %v", ok)
		if ok {
			return errors.New("revoked token still verifies")
		}
		fmt.Println("revoked")
	}
	return in.Err()
}

func consumer() error {
	files := activation.Files(true)
	names := make([]string, len(files))
	byName := map[string]*os.File{}
	for i, f := range files {
		names[i] = f.Name()
		byName[f.Name()] = f
	}
	say("zincati", "started with LISTEN_FDS=%d LISTEN_FDNAMES=%s", len(files), strings.Join(names, ":"))
	conn, tok := byName["zincati-fd"], byName["foo-op-fd"]
	if conn == nil || tok == nil {
		return fmt.Errorf("expected zincati-fd and foo-op-fd, got %v", names)
	}
	rights := unix.UnixRights(int(tok.Fd()))
	if err := unix.Sendmsg(int(conn.Fd()), []byte("please do foo-op"), rights, nil, 0); err != nil {
		return err
	}
	say("zincati", "sent \"please do foo-op\" with foo-op-fd over zincati-fd")
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	say("zincati", "rpm-ostreed answered %q", buf[:n])
	return nil
}

func oneFD(oob []byte) (*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		r, err := unix.ParseUnixRights(&m)
		if err == nil {
			fds = append(fds, r...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("expected one fd with the request, got %d", len(fds))
	}
	return os.NewFile(uintptr(fds[0]), "from zincati"), nil
}

func expectLine(r *bufio.Reader, want string) error {
	line, err := r.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("exited before %q", want)
		}
		return err
	}
	if strings.TrimSpace(line) != want {
		return fmt.Errorf("said %q, want %q", strings.TrimSpace(line), want)
	}
	return nil
}

func findCapd(flagPath string) (string, error) {
	if flagPath != "" {
		return flagPath, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "capd")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("capd")
}

func waitSocket(path string) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := client.Dial(path); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("agent did not create %s", path)
}

func removeCgroups(slice string) {
	os.WriteFile(filepath.Join(slice, "cgroup.kill"), []byte("1"), 0)
	ents, _ := os.ReadDir(slice)
	for _, e := range ents {
		if e.IsDir() {
			for i := 0; i < 100 && unix.Rmdir(filepath.Join(slice, e.Name())) == unix.EBUSY; i++ {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	unix.Rmdir(slice)
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
