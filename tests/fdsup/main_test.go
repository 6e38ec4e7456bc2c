package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/testutil"
)

// The test binary doubles as the publisher and the reader, in a cgroup of
// their own (FDSUP_TEST_ROLE).
func TestMain(m *testing.M) {
	switch os.Getenv("FDSUP_TEST_ROLE") {
	case "publish":
		os.Exit(role(publish))
	case "read":
		os.Exit(role(read))
	case "notify":
		os.Exit(notifyRole())
	}
	os.Exit(m.Run())
}

var entries = []string{"m0", "m1", "m2"}

func content(name string) string { return "content of " + name }

func role(f func(*client.Client) error) int {
	c, err := client.Dial(os.Getenv("CAPD_SOCKET"))
	if err == nil {
		err = f(c)
		c.Close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// publish publishes a pinned memfd per entry, holding content(name).
func publish(c *client.Client) error {
	for _, name := range entries {
		fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), name)
		_, err = f.WriteString(content(name))
		if err == nil {
			err = c.Publish(name, f, &client.PublishOptions{Pin: true})
		}
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// read acquires every entry (the owner's own) and prints "name=content".
func read(c *client.Client) error {
	for _, name := range entries {
		f, err := c.Acquire("pub.service", name)
		if err != nil {
			return err
		}
		b := make([]byte, 64)
		n, err := f.ReadAt(b, 0)
		f.Close()
		if n == 0 {
			return fmt.Errorf("read %s: %v", name, err)
		}
		fmt.Printf("%s=%s\n", name, b[:n])
	}
	return nil
}

// events follows fdsup's stdout.
type events struct {
	t     *testing.T
	lines chan string
	seen  []string
}

// wait returns the first unseen line with prefix, failing after 15s.
func (e *events) wait(prefix string) string {
	e.t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-e.lines:
			if !ok {
				e.t.Fatalf("fdsup's stdout ended before %q; saw %q", prefix, e.seen)
			}
			e.seen = append(e.seen, l)
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			e.t.Fatalf("no %q from fdsup in 15s; saw %q", prefix, e.seen)
		}
	}
}

// waitLog waits up to 5s for the log to contain substr: it is another pipe
// than the events, and may lag behind them.
func waitLog(t *testing.T, log *testutil.LogBuffer, substr string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(log.String(), substr); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log within 5s", substr)
		}
	}
}

func pidOf(t *testing.T, line string) int {
	t.Helper()
	f := strings.Fields(line)
	pid, err := strconv.Atoi(strings.TrimPrefix(f[1], "pid="))
	if err != nil {
		t.Fatalf("event %q: %v", line, err)
	}
	return pid
}

// startSup starts fdsup (sup) and stops it with SIGTERM when the test
// ends, which must make it exit 0.
func startSup(t *testing.T, sup *exec.Cmd) (*events, *testutil.LogBuffer) {
	t.Helper()
	log := &testutil.LogBuffer{}
	sup.Stderr = log
	out, err := sup.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	ev := &events{t: t, lines: make(chan string, 64)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ev.lines <- sc.Text()
		}
		close(ev.lines)
	}()
	t.Cleanup(func() {
		sup.Process.Signal(unix.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- sup.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fdsup after SIGTERM: %v", err)
			}
		case <-time.After(15 * time.Second):
			sup.Process.Kill()
			<-done
			t.Error("fdsup did not stop within 15s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("fdsup and agent log:\n%s", log)
		}
	})

	return ev, log
}

// TestFDStoreSurvivesSIGKILL runs the real agent under fdsup, publishes
// pinned memfds, SIGKILLs the agent and checks that the restarted agent
// has them back, contents and all, from fdsup's fd store.
func TestFDStoreSurvivesSIGKILL(t *testing.T) {
	testutil.RequireRoot(t)
	bin := t.TempDir()
	capd, err := testutil.Build("../..", bin, "./cmd/capd-full")
	if err != nil {
		t.Fatal(err)
	}
	fdsup, err := testutil.Build("../..", bin, "./tests/fdsup")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "fdsup") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	config, sock := filepath.Join(dir, "capd.toml"), filepath.Join(dir, "s")
	if err := os.WriteFile(config, nil, 0o644); err != nil { // the defaults: 256 pins per owner
		t.Fatal(err)
	}
	supCg := testutil.NewCgroup(t, "fdsup.service")
	agentCg := testutil.NewCgroup(t, "capd.service")
	pubCg := testutil.NewCgroup(t, "pub.service")

	sup := supCg.Command(fdsup, "-notify", filepath.Join(dir, "n"), "-max", "8194", "-cgroup", agentCg.Dir, "--",
		capd, "agent", "--config", config, "--socket", sock, "--log-level", "debug")
	ev, log := startSup(t, sup)

	first := pidOf(t, ev.wait("ready "))
	pub := pubCg.Command(os.Args[0])
	pub.Env = append(os.Environ(), "FDSUP_TEST_ROLE=publish", "CAPD_SOCKET="+sock)
	if b, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("publisher: %v\n%s", err, b)
	}
	list := func() []string {
		t.Helper()
		c, err := client.Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		es, err := c.List()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			got = append(got, fmt.Sprintf("%s:%s pinned=%v", e.Owner, e.Name, e.Pinned))
		}
		return got
	}
	var want []string
	for _, name := range entries {
		want = append(want, "pub.service:"+name+" pinned=true")
	}
	if got := list(); !slices.Equal(got, want) {
		t.Fatalf("entries before the kill: %q, want %q", got, want)
	}

	// What fdsup holds: every entry and the metadata journal.
	sup.Process.Signal(unix.SIGUSR1)
	store := ev.wait("store ")
	names := strings.Split(strings.TrimPrefix(strings.Fields(store)[2], "names="), ":")
	journals, ids := 0, 0
	for _, n := range names {
		switch {
		case strings.HasPrefix(n, "capd-journal-"):
			journals++
		case strings.HasPrefix(n, "e-"):
			ids++
		}
	}
	if journals != 1 || ids != len(entries) || len(names) != len(entries)+1 {
		t.Fatalf("fdsup's store %q: want %d entries and one journal", store, len(entries))
	}

	if err := unix.Kill(first, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if e := ev.wait("exit "); e != fmt.Sprintf("exit pid=%d signal=SIGKILL", first) {
		t.Fatalf("after SIGKILL: %q", e)
	}
	if e := ev.wait("start "); !strings.HasSuffix(e, fmt.Sprintf(" fds=%d", len(names))) {
		t.Fatalf("restart %q: want the %d stored fds passed", e, len(names))
	}
	second := pidOf(t, ev.wait("ready "))
	if second == first {
		t.Fatalf("ready again from pid %d, the killed one", first)
	}
	waitLog(t, log, fmt.Sprintf("restored entries from systemd's fd store\" entries=%d", len(entries)))
	if got := list(); !slices.Equal(got, want) {
		t.Fatalf("entries after the restart: %q, want %q", got, want)
	}
	rd := pubCg.Command(os.Args[0])
	rd.Env = append(os.Environ(), "FDSUP_TEST_ROLE=read", "CAPD_SOCKET="+sock)
	b, err := rd.CombinedOutput()
	if err != nil {
		t.Fatalf("reader: %v\n%s", err, b)
	}
	var wantRead string
	for _, name := range entries {
		wantRead += name + "=" + content(name) + "\n"
	}
	if string(b) != wantRead {
		t.Fatalf("reader got %q, want %q", b, wantRead)
	}
}

// notifyRole is a service under fdsup. Its first start stores memfds "a"
// and "b" as x, a again as y, "c" as z, "d" as w (past -max 3), removes
// z, says READY=1 and dies. Restarted, it prints what it was passed (a
// "child" line among fdsup's events) and waits for SIGTERM.
func notifyRole() int {
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = unix.Connect(sock, &unix.SockaddrUnix{Name: os.Getenv("NOTIFY_SOCKET")})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	send := func(msg string, fds ...int) {
		if err := unix.Sendmsg(sock, []byte(msg), unix.UnixRights(fds...), nil, 0); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if os.Getenv("LISTEN_FDS") == "" {
		memfd := func(s string) int {
			fd, _ := unix.MemfdCreate(s, unix.MFD_CLOEXEC)
			unix.Write(fd, []byte(s))
			return fd
		}
		a, b, c, d := memfd("a"), memfd("b"), memfd("c"), memfd("d")
		send("FDSTORE=1\nFDNAME=x\nFDPOLL=0\n", a, b)
		send("FDSTORE=1\nFDNAME=y\n", a)
		send("FDSTORE=1\nFDNAME=z\n", c)
		send("FDSTORE=1\nFDNAME=w\n", d)
		send("FDSTOREREMOVE=1\nFDNAME=z\n")
		send("READY=1")
		return 3
	}
	var got []string
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	for fd := 3; fd < 3+n && linux.FDOpen(fd); fd++ {
		b := make([]byte, 8)
		n, _ := unix.Pread(fd, b, 0)
		got = append(got, string(b[:n]))
	}
	fmt.Printf("child pid=%d listen_pid=%s fds=%s names=%s contents=%s\n", os.Getpid(), os.Getenv("LISTEN_PID"),
		os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"), strings.Join(got, ","))
	send("READY=1")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGTERM)
	<-sig
	return 0
}

// TestProtocol checks fdsup's systemd semantics with the test binary as
// the service: the store's limit, duplicates suppressed, FDSTOREREMOVE,
// and what a restart passes (newest first, LISTEN_PID the child's pid).
func TestProtocol(t *testing.T) {
	testutil.RequireRoot(t)
	fdsup, err := testutil.Build("../..", t.TempDir(), "./tests/fdsup")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "fdsup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	supCg := testutil.NewCgroup(t, "fdsup.service")
	childCg := testutil.NewCgroup(t, "child.service")
	sup := supCg.Command(fdsup, "-notify", filepath.Join(dir, "n"), "-max", "3", "-cgroup", childCg.Dir, "--", os.Args[0])
	sup.Env = append(os.Environ(), "FDSUP_TEST_ROLE=notify")
	ev, log := startSup(t, sup)
	first := pidOf(t, ev.wait("ready "))
	if e := ev.wait("exit "); e != fmt.Sprintf("exit pid=%d code=3", first) {
		t.Fatalf("first run: %q", e)
	}
	if e := ev.wait("start "); !strings.HasSuffix(e, " fds=2") {
		t.Fatalf("restart: %q", e)
	}
	child := ev.wait("child ")
	pid := pidOf(t, child)
	if want := fmt.Sprintf("child pid=%d listen_pid=%d fds=2 names=x:x contents=b,a", pid, pid); child != want {
		t.Fatalf("restarted child: %q, want %q", child, want)
	}
	if pid := pidOf(t, ev.wait("ready ")); pid != pidOf(t, child) {
		t.Fatalf("ready from %d, not the child %s", pid, child)
	}
	waitLog(t, log, "suppressing a duplicate fd")
	waitLog(t, log, "fd store full")
}
