package tests

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capd-dev/capd/client"
)

// names lists OWNER:NAME of what unit sees.
func (e *env) names(unit string) string {
	e.t.Helper()
	r := e.mustRun(unit, nil, "list", "--json")
	var l cliList
	parseJSON(e.t, r.stdout, &l)
	var out []string
	for _, en := range l.Entries {
		out = append(out, en.Owner+":"+en.Name)
	}
	return strings.Join(out, " ")
}

// waitNames waits up to 5 s for unit's list to read want.
func (e *env) waitNames(unit, want string) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := e.names(unit)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s sees %q, want %q\nagent log:\n%s", unit, got, want, e.agent.Log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// read acquires ref (a regular file) inside unit and returns its content,
// read through a reopened file so that the shared offset does not matter.
func (e *env) read(unit, ref string) string {
	e.t.Helper()
	return e.mustRun(unit, nil, "acquire", ref, "--", "cat", "/proc/self/fd/3").stdout
}

// Killing every process of the owner's cgroup drops its unpinned entries
// and keeps the pinned ones; the restarted service (same cgroup populated
// again, then a new cgroup at the same path, as systemd does) acquires its
// pinned entries back, consumers keep acquiring them, and root removes them
// once the service is gone for good.
func TestEntriesFollowTheOwnersLife(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "other.service")
	owner := e.cgs["rpm-ostreed.service"]
	e.publishFile("rpm-ostreed.service", "unpinned", "u")
	e.publishFile("rpm-ostreed.service", "pinned", "p", "--pin")
	e.waitNames("other.service", "rpm-ostreed.service:pinned rpm-ostreed.service:unpinned")

	owner.Kill(t)
	e.waitNames("other.service", "rpm-ostreed.service:pinned")
	if got := e.read("other.service", "rpm-ostreed.service:pinned"); got != "p" {
		t.Fatalf("consumer read %q from the pinned entry", got)
	}
	expectFail(t, e.run("other.service", nil, "acquire", "rpm-ostreed.service:unpinned", "--", "true"), 5, "not-found")

	// The service starts again in the same cgroup.
	owner.Keep(t)
	if got := e.read("rpm-ostreed.service", "rpm-ostreed.service:pinned"); got != "p" {
		t.Fatalf("restarted owner read %q from its pinned entry", got)
	}
	e.publishFile("rpm-ostreed.service", "unpinned", "u2")

	// Stopped, cgroup removed, started in a new cgroup at the same path.
	owner.Recreate(t)
	e.waitNames("other.service", "rpm-ostreed.service:pinned")
	owner.Keep(t)
	if got := e.read("rpm-ostreed.service", "rpm-ostreed.service:pinned"); got != "p" {
		t.Fatalf("owner in its new cgroup read %q", got)
	}
	e.publishFile("rpm-ostreed.service", "unpinned", "u3")
	if got := e.read("other.service", "rpm-ostreed.service:unpinned"); got != "u3" {
		t.Fatalf("consumer read %q from the new unpinned entry", got)
	}
	// The new cgroup is watched too.
	owner.Kill(t)
	e.waitNames("other.service", "rpm-ostreed.service:pinned")

	// Gone for good: the pinned entry stays until root removes it.
	owner.Recreate(t)
	expectFail(t, e.runAs("", 65534, nil, "revoke", "--owner", "rpm-ostreed.service", "pinned"), 4, "host administrator")
	e.mustRun("other.service", nil, "revoke", "--owner", "rpm-ostreed.service", "pinned")
	e.waitNames("other.service", "")
	expectFail(t, e.run("", nil, "revoke", "--owner", "rpm-ostreed.service", "pinned"), 5, "not-found")
}

// A publisher whose cgroup empties right after publishing (a one-shot
// command) leaves no unpinned entry behind.
func TestShortLivedPublisher(t *testing.T) {
	e := newEnv(t, seedPolicy, "oneshot.service")
	cg := e.cgs["oneshot.service"]
	e.publishFile("oneshot.service", "gone", "x")
	e.publishFile("oneshot.service", "kept", "x", "--pin")
	cg.Kill(t)
	e.waitNames("", "oneshot.service:kept")
	// The CLI's process is the cgroup's only process: publish, exit.
	child := e.cgs["oneshot.service"]
	f := tempFile(t, "y")
	defer f.Close()
	cmd := child.Command(capd, "publish", "brief", "--fd", "3")
	cmd.Env = e.agent.Env()
	cmd.ExtraFiles = []*os.File{f}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	e.waitNames("", "oneshot.service:kept")
}

// Unpinned entries published while their owner cgroup is already watched
// (from the unit's cgroup, whose id the agent has from the pidfd, and from
// a cgroup below it) join the watch, and go with the others when the
// cgroup empties; so do those of the cgroup made again at the same path.
func TestUnpinnedEntriesShareTheOwnersWatch(t *testing.T) {
	e := newEnv(t, seedPolicy, "rpm-ostreed.service", "rpm-ostreed.service/worker", "other.service")
	owner := e.cgs["rpm-ostreed.service"]
	e.publishFile("rpm-ostreed.service", "a", "a")
	e.publishFile("rpm-ostreed.service", "b", "b")
	e.publishFile("rpm-ostreed.service/worker", "c", "c")
	e.waitNames("other.service", "rpm-ostreed.service:a rpm-ostreed.service:b rpm-ostreed.service:c")
	owner.Kill(t)
	e.waitNames("other.service", "")

	owner.Recreate(t)
	owner.Keep(t)
	e.publishFile("rpm-ostreed.service", "d", "d")
	e.publishFile("rpm-ostreed.service", "e", "e")
	if got := e.read("other.service", "rpm-ostreed.service:e"); got != "e" {
		t.Fatalf("consumer read %q", got)
	}
	owner.Kill(t)
	e.waitNames("other.service", "")
	expectFail(t, e.run("other.service", nil, "acquire", "rpm-ostreed.service:e", "--", "true"), 5, "not-found")
}

const quotaPolicy = `
[agent]
default_max_entries = 3
default_max_pinned = 2

[[quota]]
unit = "leaf.service"
max_pinned = 1

[[quota]]
cgroup = "%s"
max_entries = 5
`

// Quotas at the leaf (a unit quota), at an ancestor (the test's slice),
// summed across siblings, and the default for owners without one. Every
// refusal names the cgroup and its usage, and changes nothing.
func TestQuotas(t *testing.T) {
	e := newEnv(t, seedPolicy, "leaf.service", "a.service", "b.service")
	slice := path.Dir(e.cgs["a.service"].Path)
	n := strings.Count(e.agent.Log.String(), "configuration reloaded")
	e.agent.Reload(t, fmt.Sprintf(quotaPolicy, slice))
	e.agent.WaitLog(t, "configuration reloaded", n)

	quota := func(unit, name string, words ...string) {
		t.Helper()
		f := tempFile(t, "x")
		defer f.Close()
		args := []string{"publish", name, "--fd", "3"}
		if strings.HasPrefix(name, "pin") {
			args = append(args, "--pin")
		}
		expectFail(t, e.run(unit, []*os.File{f}, args...), 7, append(words, "quota-exceeded")...)
	}
	// Leaf: the unit quota allows one pin; entries are not limited there.
	e.publishFile("leaf.service", "pin1", "x", "--pin")
	quota("leaf.service", "pin2", e.cgs["leaf.service"].Path+" holds 1 pinned entries", "quota unit=leaf.service is 1")
	e.publishFile("leaf.service", "plain1", "x")
	// Default for an owner without a quota: 3 entries.
	for i := 1; i <= 3; i++ {
		e.publishFile("a.service", fmt.Sprint("plain", i), "x")
	}
	// Ancestor: the slice holds 5 entries over its children.
	quota("b.service", "plain1", "cgroup "+slice+" holds 5 entries", "quota cgroup="+slice+" is 5")
	// Several limits full: the one nearest the publisher is named.
	quota("a.service", "plain4", e.cgs["a.service"].Path+" holds 3 entries", "default_max_entries is 3")
	// Refusals changed nothing.
	want := "a.service:plain1 a.service:plain2 a.service:plain3 leaf.service:pin1 leaf.service:plain1"
	if got := e.names(""); got != want {
		t.Fatalf("after refusals root sees %q, want %q", got, want)
	}
	for _, ref := range strings.Fields(want) {
		unit, _, _ := strings.Cut(ref, ":")
		e.read(unit, ref)
	}
	// Room in the slice again: now a.service's own default is the limit.
	e.mustRun("leaf.service", nil, "revoke", "plain1")
	quota("a.service", "plain4", e.cgs["a.service"].Path+" holds 3 entries", "default_max_entries is 3")
	e.publishFile("b.service", "pin1", "x", "--pin")
	quota("b.service", "pin2", "cgroup "+slice+" holds 5 entries")

	// status shows the tree with usage and limits.
	var st cliStatus
	parseJSON(t, e.mustRun("", nil, "status", "--json").stdout, &st)
	nodes := map[string]cliCgroup{}
	for _, n := range st.Cgroups {
		nodes[n.Cgroup] = n
	}
	if n := nodes[slice]; n.Entries != 5 || n.Pinned != 2 || n.MaxEntries == nil || *n.MaxEntries != 5 || n.MaxEntriesFrom == nil || *n.MaxEntriesFrom != "quota cgroup="+slice || n.MaxPinned != nil || n.MaxPinnedFrom != nil {
		t.Errorf("status of %s: %+v", slice, n)
	}
	if n := nodes[e.cgs["a.service"].Path]; n.Owned != 3 || n.MaxEntries == nil || *n.MaxEntries != 3 || n.MaxEntriesFrom == nil || *n.MaxEntriesFrom != "default_max_entries" || n.MaxPinned == nil || *n.MaxPinned != 2 {
		t.Errorf("status of a.service: %+v", n)
	}
	if n := nodes["/"]; n.Entries != st.Entries || n.MaxEntries == nil || st.OpenFDs == 0 || st.FDLimit == 0 {
		t.Errorf("status of /: %+v; agent %+v", n, st)
	}
	table := e.mustRun("", nil, "status").stdout
	for _, w := range []string{"CGROUP", "  /a.service", "3 (default_max_entries)", "5 (quota cgroup=" + slice + ")", "fds open"} {
		if !strings.Contains(table, w) {
			t.Errorf("status table lacks %q:\n%s", w, table)
		}
	}
	expectFail(t, e.runAs("", 65534, nil, "status"), 4, "host administrator")
}

// SIGHUP while clients publish and acquire: a good config takes effect at
// once (a limit lowered below usage refuses new entries and keeps the old
// ones), a bad one is rejected with its error and the old one stays, and
// no client sees an error it should not.
func TestReloadWhileClientsRun(t *testing.T) {
	e := newEnv(t, "[[quota]]\ncgroup = \"/\"\nmax_entries = 100\n")
	c, err := client.Dial(e.agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me, err := c.Whoami()
	if err != nil {
		t.Fatal(err)
	}
	f := tempFile(t, "x")
	defer f.Close()
	for i := 0; i < 20; i++ {
		if err := c.Publish(fmt.Sprint("e", i), f, nil); err != nil {
			t.Fatal(err)
		}
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var ops atomic.Int64
	errs := make(chan error, 4)
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := client.Dial(e.agent.Socket)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for i := 0; !stop.Load(); i++ {
				fd, err := c.AcquireFD(me.Name, fmt.Sprint("e", i%20))
				if err != nil {
					errs <- err
					return
				}
				os.NewFile(uintptr(fd), "").Close()
				if _, err := c.List(); err != nil {
					errs <- err
					return
				}
				ops.Add(1)
			}
		}()
	}

	reloaded := strings.Count(e.agent.Log.String(), "configuration reloaded")
	failed := strings.Count(e.agent.Log.String(), "reload failed")
	e.agent.Reload(t, "[[quota]]\ncgroup = \"/\"\nmax_entries = 10\n")
	reloaded = e.agent.WaitLog(t, "configuration reloaded", reloaded)
	if err := c.Publish("new", f, nil); !errors.Is(err, client.ErrQuotaExceeded) {
		t.Fatalf("publish after lowering the limit below usage: %v", err)
	}

	e.agent.Reload(t, "[[quota]]\ncgroup = \"/\"\nmax_entries = 1000\nbogus = 1\n")
	e.agent.WaitLog(t, "reload failed", failed)
	if !strings.Contains(e.agent.Log.String(), `unknown key \"quota.bogus\"`) {
		t.Errorf("the rejected reload does not say why:\n%s", e.agent.Log)
	}
	if err := c.Publish("new", f, nil); !errors.Is(err, client.ErrQuotaExceeded) {
		t.Fatalf("a bad config replaced the good one: publish gave %v", err)
	}

	e.agent.Reload(t, "[[quota]]\ncgroup = \"/\"\nmax_entries = 21\n")
	e.agent.WaitLog(t, "configuration reloaded", reloaded)
	if err := c.Publish("new", f, nil); err != nil {
		t.Fatalf("publish after raising the limit: %v", err)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error("client during reloads:", err)
	}
	if ops.Load() == 0 {
		t.Fatal("the clients made no requests during the reloads")
	}
	if list, err := c.List(); err != nil || len(list) != 21 {
		t.Fatalf("after the reloads: %d entries, %v; want 21", len(list), err)
	}
}

// A max_entries that the fd limit cannot hold is reported with numbers at
// start and on reload, and the store is capped at what fits.
func TestCapacityWarning(t *testing.T) {
	e := newEnv(t, "[agent]\nmax_entries = 100000000\n")
	e.agent.WaitLog(t, "configured limits do not fit the fd limit", 0)
	for _, w := range []string{"max_entries=100000000", "rlimit_nofile=", "entries_that_fit="} {
		if !strings.Contains(e.agent.Log.String(), w) {
			t.Errorf("the warning lacks %q:\n%s", w, e.agent.Log)
		}
	}
	var st cliStatus
	parseJSON(t, e.mustRun("", nil, "status", "--json").stdout, &st)
	if st.MaxEntries == 0 || st.MaxEntries >= st.FDLimit {
		t.Fatalf("store limit %d with an fd limit of %d", st.MaxEntries, st.FDLimit)
	}
	e.agent.Reload(t, "[agent]\nmax_entries = 100000001\n")
	e.agent.WaitLog(t, "configured limits do not fit the fd limit", 1)
}

// A close that blocks (a TCP socket lingering on unsent data its peer
// never reads) must not hold up other owners' drops.
func TestBlockingCloseDoesNotStallDrops(t *testing.T) {
	e := newEnv(t, seedPolicy, "linger.service", "other.service")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := l.Accept() // never reads
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	tc := conn.(*net.TCPConn)
	tc.SetLinger(5)
	tc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	chunk := make([]byte, 1<<16)
	for {
		if _, err := tc.Write(chunk); err != nil {
			break // send buffer and the peer's receive buffer are full
		}
	}
	f, err := tc.File()
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	e.mustRun("linger.service", []*os.File{f}, "publish", "stuck", "--fd", "3")
	f.Close() // the agent now holds the last copy
	e.publishFile("other.service", "plain", "x")

	e.cgs["linger.service"].Kill(t) // its drop closes the lingering socket: up to 5 s
	e.cgs["other.service"].Kill(t)
	start := time.Now()
	e.waitNames("", "")
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("drops took %v: a blocking close held them up", d)
	}
}
