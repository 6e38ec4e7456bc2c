package tests

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/testutil"
)

// TestTokenRoundTrip is the heart of the seed scenario with the Go client:
// a token published by this process reaches a consumer service through the
// agent, comes back over a socket, verifies, and stops verifying once
// revoked.
func TestTokenRoundTrip(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t, `
[[grant]]
consumer = "zincati.service"
acquire  = ["`+selfIdentity(t)+`:tok-*"]
`, "zincati.service")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me, err := c.Whoami()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := client.NewToken("tok-foo-op")
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	if err := tok.Publish(c, nil); err != nil {
		t.Fatal(err)
	}
	// The owner takes its own entry back: the same open file description.
	own, err := c.Acquire(me.Name, "tok-foo-op")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if ok, err := client.Verify(tok.File(), own); !ok || err != nil {
		t.Fatalf("Verify(token, acquired) = %v, %v", ok, err)
	}

	// A consumer in zincati.service acquires it and sends it back.
	back := filepath.Join(t.TempDir(), "back")
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: back}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(lfd, 1)
	self, _ := os.Executable()
	cmd := e.cgs["zincati.service"].Command(capd, "acquire", me.Name+":tok-foo-op", "--", self)
	cmd.Env = e.agent.Env("CAPD_TEST_ROLE=sendback", "CAPD_TEST_BACK="+back)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("consumer: %v\n%s", err, out)
	}
	cfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cfd)
	_, fds, err := fdpass.Recv(cfd, make([]byte, 64), make([]byte, fdpass.OOBSize(2)), nil, 1)
	if err != nil || len(fds) != 1 {
		t.Fatalf("receive from consumer: %v %v", fds, err)
	}
	got := os.NewFile(uintptr(fds[0]), "from zincati")
	defer got.Close()
	if ok, err := tok.Check(got); !ok || err != nil {
		t.Fatalf("token sent back by the consumer does not check: %v %v", ok, err)
	}
	// An impostor token does not check.
	fake, _ := client.NewToken("tok-foo-op")
	defer fake.Close()
	if ok, _ := tok.Check(fake.File()); ok {
		t.Fatal("another memfd checks as the token")
	}

	if err := tok.Revoke(c); err != nil {
		t.Fatal(err)
	}
	if ok, err := tok.Check(got); ok || err != nil {
		t.Fatalf("revoked token still checks: %v %v", ok, err)
	}
	if _, err := c.Acquire(me.Name, "tok-foo-op"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("acquire after revoke: %v, want not-found", err)
	}
}

// selfIdentity is the identity the agent will see for this test process.
func selfIdentity(t *testing.T) string {
	p, err := cgroup.ProcPath(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return cgroup.IdentityFromPath(p)
}

func TestTokenTTL(t *testing.T) {
	e := newEnv(t, "")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me, _ := c.Whoami()
	tok, _ := client.NewToken("ttl")
	defer tok.Close()
	published := time.Now()
	if err := tok.Publish(c, &client.PublishOptions{TTL: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	f, err := c.Acquire(me.Name, "ttl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ok, _ := tok.Check(f); !ok {
		t.Fatal("fresh TTL token does not check")
	}
	// Wait for the expiry itself, not for a guess at when it happened.
	for ok := true; ok; ok, _ = tok.Check(f) {
		if time.Since(published) > 10*time.Second {
			t.Fatal("a token with a TTL of 300 ms still checks after 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(published); d < 300*time.Millisecond {
		t.Fatalf("the token expired after %v, before its TTL of 300 ms", d)
	}
	// The token's own deadline counts from before the publish was sent,
	// the agent's from when it stored the entry: the agent's comes a
	// little later, never earlier than the TTL.
	for {
		f, err := c.Acquire(me.Name, "ttl")
		if errors.Is(err, client.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatalf("acquire after expiry: %v", err)
		}
		f.Close()
		if time.Since(published) > 10*time.Second {
			t.Fatal("the agent still hands out a token with a TTL of 300 ms after 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := tok.Revoke(c); err != nil {
		t.Fatalf("revoking an expired token: %v", err)
	}
}

// TestCyclesLeakNothing runs 10,000 publish/acquire/revoke cycles and checks
// that the agent holds exactly as many fds afterwards as before. Both
// counts are taken with no client connected: a connection's fds vary
// while it is open (a parked one has the poller's duplicate of its socket).
func TestCyclesLeakNothing(t *testing.T) {
	e := newEnv(t, "")
	pid := e.agent.Cmd.Process.Pid
	before, err := testutil.CountFDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me, _ := c.Whoami()
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := 0; i < 10000; i++ {
		if err := c.Publish("cycle", f, nil); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		g, err := c.Acquire(me.Name, "cycle")
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		g.Close()
		if err := c.Revoke("cycle"); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	c.Close()
	// The agent closes released fds on a closer goroutine, and the
	// connection once it sees the close: give them a moment.
	after, _ := testutil.CountFDs(pid)
	for deadline := time.Now().Add(2 * time.Second); after > before && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		after, _ = testutil.CountFDs(pid)
	}
	if after > before {
		t.Fatalf("agent fds: %d before, %d after 10,000 cycles", before, after)
	}
}

// TestReconnectAfterIdle: the agent closes idle connections; the client
// redials transparently on its next request.
func TestReconnectAfterIdle(t *testing.T) {
	e := newEnv(t, "[agent]\nidle_timeout = \"100ms\"\n")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Whoami(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if _, err := c.Whoami(); err != nil {
		t.Fatalf("request after idle disconnect: %v", err)
	}
}

func TestBadConfigFailsStart(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := filepath.Join(t.TempDir(), "capd.toml")
	os.WriteFile(cfg, []byte("[[grant]]\nconsumer = \"a.service\"\nacquire = [\"nocolon\"]\n"), 0o644)
	out, err := exec.Command(capd, "agent", "--config", cfg, "--socket", filepath.Join(t.TempDir(), "s")).CombinedOutput()
	if err == nil {
		t.Fatal("agent started with a bad config")
	}
	for _, w := range []string{cfg, "line 3", "grant.acquire", "not OWNER:NAME"} {
		if !bytesContains(out, w) {
			t.Errorf("agent error %q lacks %q", out, w)
		}
	}
}

func bytesContains(b []byte, s string) bool { return strings.Contains(string(b), s) }

func cgroupProcPath() (string, error) {
	p, err := cgroup.ProcPath(os.Getpid())
	if err != nil {
		return "", err
	}
	return cgroup.IdentityFromPath(p), nil
}
