package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

// Fault injection: concurrent owners publish, replace and revoke pinned
// entries, each a memfd holding "OWNER/NAME/GEN", while the agent is
// restarted again and again; then every name is read back. Nothing the
// agent acknowledged may be lost (an acknowledged-live name not found),
// handed out as another file (wrong content: another owner's, another
// name's, an older generation) or resurrected (an acknowledged revoke found
// live again). Requests without an acknowledgement (a reset connection,
// "may or may not have taken effect", busy, unreachable) are ambiguous: the
// name may then hold either outcome. The load is tests/faultgen, one
// process per owner, each in a service cgroup of its own.
//
// Knobs: CAPD_FI_SEED=N repeats a fault schedule and the workers' choices
// (the timing is never the same); CAPD_FI_KEEP=DIR keeps the event files and
// the agent's log or journal there. A replace is an atomic swap even when
// not acknowledged: a name must never end up with neither its old nor its
// new file (once, a kill -9 between the agent's FDSTOREREMOVE of the old fd
// and the metadata naming the new one did that). The host test follows half
// of its SIGUSR2 with a second one 0 to 10 ms later, while the new process
// may still be exec'ing (once, SIGUSR2's default action killed it then, and
// every entry with it).

const (
	fiWorkers = 6
	fiNames   = 12 // names per worker
	fiFaults  = 20
)

// fiPolicy lets the verifier read every worker's entries.
const fiPolicy = "[[grant]]\nconsumer = \"fi-verify.service\"\nacquire = [\"fi-w*.service:*\"]\n"

// fiEvent is one line of faultgen's output (faultgen.Event).
type fiEvent struct {
	Seq     int    `json:"seq"`
	T       int64  `json:"t_us"`
	Op      string `json:"op"`
	Owner   string `json:"owner"`
	Name    string `json:"name"`
	Content string `json:"content"`
	Via     string `json:"via"`
	Res     string `json:"res"`
	Err     string `json:"err"`
}

func fiSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CAPD_FI_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CAPD_FI_SEED=%q: %v", s, err)
		}
		seed = n
	}
	t.Logf("seed %d (CAPD_FI_SEED=%d repeats the schedule)", seed, seed)
	return seed
}

// buildFaultgen builds ./tests/faultgen, static, into a temp dir.
func buildFaultgen(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	out := filepath.Join(dir, "faultgen")
	cmd := exec.Command("go", "build", "-o", out, "./tests/faultgen")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build faultgen: %v\n%s", err, b)
	}
	return out
}

// fiFleet is the running workers.
type fiFleet struct {
	cmds []*exec.Cmd
	logs []*testutil.LogBuffer
	done []chan error
}

// start starts cmd as worker i; the test's cleanup kills what is left.
func (f *fiFleet) start(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	lb := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = lb, lb
	if err := cmd.Start(); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	f.cmds, f.logs, f.done = append(f.cmds, cmd), append(f.logs, lb), append(f.done, done)
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
}

// stopAll kills every worker and waits for it.
func (f *fiFleet) stopAll() {
	for i, done := range f.done {
		f.cmds[i].Process.Kill()
		done <- <-done
	}
}

// fiChildAlive reports whether our child pid has not exited, without
// reaping it. (/proc/PID/stat is no answer: while a thread other than the
// leader execs, the leader shows as a zombie for a moment.)
func fiChildAlive(pid int) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err == nil && info.Signo == 0
}

// wait waits for every worker until deadline and reports those that failed
// or did not stop.
func (f *fiFleet) wait(t *testing.T, deadline time.Time) {
	t.Helper()
	for i, done := range f.done {
		select {
		case err := <-done:
			done <- err // for the cleanup
			if err != nil {
				t.Errorf("worker %d: %v\n%s", i, err, f.logs[i])
			}
		case <-time.After(time.Until(deadline)):
			t.Errorf("worker %d did not stop in time; killing it\n%s", i, f.logs[i])
			f.cmds[i].Process.Kill()
		}
	}
}

func fiReadEvents(t *testing.T, path string) []fiEvent {
	t.Helper()
	fl, err := os.Open(path)
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	defer fl.Close()
	var evs []fiEvent
	sc := bufio.NewScanner(fl)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev fiEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("%s: %q: %v", path, sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return evs
}

// fiName is what the replay knows of one OWNER:NAME.
type fiName struct {
	possible  map[string]bool // contents it may hold now; "" is absent
	amb       bool            // an unacknowledged change since the last definite answer
	any       bool            // after a reported violation: take the next answer as it is
	published map[string]bool // every content ever sent under this name
	pending   *fiEvent        // the unacknowledged change the next read resolves
	before    map[string]bool // possible before pending
}

// fiReplay replays the workers' events and checks each answer against what
// was acknowledged before it.
type fiReplay struct {
	t     *testing.T
	names map[string]*fiName // OWNER:NAME

	workers, perWorker                  int // the fleet: workers, names each
	requests                            int
	ackPublish, ackReplace, ackRevoke   int
	ambiguous, ambApplied, ambUnapplied int
	refusedApplied                      int // busy or unreachable, and yet applied
	definite                            int // exists or not-found answers
	lost, wrong, resurrected            int
	absentAfterUnackedReplace           int
	viaCLI                              int
	outcomes                            map[string]int // "via op res" -> count
	ambErrs                             map[string]int // unacknowledged outcomes' messages, digits elided
	details                             []string
}

func newFiReplay(t *testing.T, workers, names int) *fiReplay {
	return &fiReplay{t: t, workers: workers, perWorker: names, names: map[string]*fiName{}, outcomes: map[string]int{}, ambErrs: map[string]int{}}
}

func (r *fiReplay) name(owner, name string) *fiName {
	k := owner + ":" + name
	n := r.names[k]
	if n == nil {
		n = &fiName{possible: map[string]bool{"": true}, published: map[string]bool{}}
		r.names[k] = n
	}
	return n
}

func fiSet(xs ...string) map[string]bool {
	m := map[string]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func fiKeys(m map[string]bool) string {
	var s []string
	for k := range m {
		if k == "" {
			k = "(absent)"
		}
		s = append(s, k)
	}
	sort.Strings(s)
	return strings.Join(s, " | ")
}

// observe checks a definite answer x ("" for absent, "?" for present with
// unknown content) and makes it the state.
func (r *fiReplay) observe(n *fiName, ref string, x string, where string) {
	ok := n.any || n.possible[x]
	if x == "?" {
		ok = n.any
		for c := range n.possible {
			ok = ok || c != ""
		}
	}
	if !ok {
		hasLive := false
		for c := range n.possible {
			hasLive = hasLive || c != ""
		}
		kind := ""
		switch {
		case x == "" && n.amb:
			r.absentAfterUnackedReplace++
			kind = "absent after an unacknowledged replace (tolerated)"
		case x == "":
			r.lost++
			kind = "LOST"
		case x != "?" && !n.published[x]:
			r.wrong++
			kind = "WRONG FILE (never published under this name)"
		case !hasLive:
			r.resurrected++
			kind = "RESURRECTED"
		default:
			r.wrong++
			kind = "WRONG FILE (stale generation)"
		}
		shown := x
		if shown == "" {
			shown = "(absent)"
		}
		r.details = append(r.details, fmt.Sprintf("%s: %s: %s: found %s, expected %s", where, ref, kind, shown, fiKeys(n.possible)))
	}
	if p := n.pending; p != nil && x != "?" {
		applied := false
		switch p.Op {
		case "publish", "replace":
			applied = x == p.Content
		case "revoke":
			applied = x == "" && !n.before[""]
		}
		if applied {
			r.ambApplied++
			if p.Res == "busy" || p.Res == "unreachable" {
				r.refusedApplied++
				r.details = append(r.details, fmt.Sprintf("%s: %s: a %s answered %q took effect (%s)", where, ref, p.Op, p.Res, p.Err))
			}
		} else {
			r.ambUnapplied++
		}
	}
	if x != "?" {
		n.possible = fiSet(x)
		n.amb, n.pending = false, nil
	} else {
		live := map[string]bool{}
		for c := range n.possible {
			if c != "" {
				live[c] = true
			}
		}
		n.possible = live
	}
	n.any = x == "?" && len(n.possible) == 0
}

// worker replays one worker's events in order.
func (r *fiReplay) worker(evs []fiEvent) (hello, done bool) {
	for i := range evs {
		ev := evs[i]
		switch ev.Op {
		case "hello":
			hello = true
			continue
		case "done":
			done = true
			continue
		}
		ref := ev.Owner + ":" + ev.Name
		n := r.name(ev.Owner, ev.Name)
		where := fmt.Sprintf("%s #%d %s via %s", ev.Owner, ev.Seq, ev.Op, ev.Via)
		r.outcomes[ev.Via+" "+ev.Op+" "+ev.Res]++
		if ev.Op != "read" {
			r.requests++
			if ev.Via == "cli" {
				r.viaCLI++
			}
		}
		switch ev.Op {
		case "publish", "replace":
			n.published[ev.Content] = true
			switch ev.Res {
			case "ok":
				if ev.Op == "publish" {
					r.observe(n, ref, "", where) // accepted without replace: it was absent
					r.ackPublish++
				} else {
					r.ackReplace++
				}
				n.possible, n.amb, n.any, n.pending = fiSet(ev.Content), false, false, nil
			case "exists":
				r.definite++
				r.observe(n, ref, "?", where)
			default:
				r.unacked(n, &evs[i], ev.Content)
			}
		case "revoke":
			switch ev.Res {
			case "ok":
				r.observe(n, ref, "?", where) // revoked: it was live
				r.ackRevoke++
				n.possible, n.amb, n.any, n.pending = fiSet(""), false, false, nil
			case "notfound":
				r.definite++
				r.observe(n, ref, "", where)
			default:
				r.unacked(n, &evs[i], "")
			}
		case "read":
			switch ev.Res {
			case "ok":
				r.observe(n, ref, ev.Content, where)
			case "notfound":
				r.observe(n, ref, "", where)
			}
		default:
			r.t.Errorf("unknown event %+v", ev)
		}
	}
	return hello, done
}

func (r *fiReplay) unacked(n *fiName, ev *fiEvent, outcome string) {
	r.ambiguous++
	r.ambErrs[ev.Res+": "+strings.Map(func(c rune) rune {
		if c >= '0' && c <= '9' {
			return -1
		}
		return c
	}, ev.Err)]++
	if n.pending == nil {
		n.before = map[string]bool{}
		for c := range n.possible {
			n.before[c] = true
		}
	}
	n.pending = ev
	n.possible[outcome] = true
	// Only a replace of a live entry can end with neither file in place.
	n.amb = n.amb || (ev.Op == "replace" && !n.possible[""])
}

// final checks one verification round and returns the live entries it saw.
func (r *fiReplay) final(evs []fiEvent, round string) map[string]string {
	live := map[string]string{}
	for _, ev := range evs {
		ref := ev.Owner + ":" + ev.Name
		n := r.name(ev.Owner, ev.Name)
		where := "final " + round
		switch ev.Res {
		case "ok":
			live[ref] = ev.Content
			r.observe(n, ref, ev.Content, where)
		case "notfound":
			r.observe(n, ref, "", where)
		default:
			r.t.Errorf("%s: %s: no answer: %s %s", where, ref, ev.Res, ev.Err)
		}
	}
	if len(evs) != r.workers*r.perWorker {
		r.t.Errorf("final %s: %d answers, want %d", round, len(evs), r.workers*r.perWorker)
	}
	return live
}

// report logs the figures and fails the test on any violation.
func (r *fiReplay) report(faults string, live int, fds string) {
	t := r.t
	t.Logf("figures: faults %s; requests %d (%d through the CLI); acknowledged publishes %d (+%d replaces), acknowledged revokes %d; live entries %d; lost %d, wrong %d, resurrected %d; ambiguous %d (applied %d, not applied %d; busy/unreachable yet applied %d); absent after an unacknowledged replace %d; definite exists/not-found %d; %s",
		faults, r.requests, r.viaCLI, r.ackPublish, r.ackReplace, r.ackRevoke, live, r.lost, r.wrong, r.resurrected,
		r.ambiguous, r.ambApplied, r.ambUnapplied, r.refusedApplied, r.absentAfterUnackedReplace, r.definite, fds)
	t.Logf("outcomes: %s", fiCounts(r.outcomes))
	t.Logf("unacknowledged: %s", fiCounts(r.ambErrs))
	for i, d := range r.details {
		if i == 50 {
			t.Logf("... %d more", len(r.details)-50)
			break
		}
		t.Log(d)
	}
	if r.lost+r.wrong+r.resurrected > 0 {
		t.Errorf("lost %d, wrong %d, resurrected %d", r.lost, r.wrong, r.resurrected)
	}
	// A replace is an atomic swap: after a crash the name holds the old
	// file or the new one, never neither.
	if r.absentAfterUnackedReplace > 0 {
		t.Errorf("%d names lost their acknowledged file in an unacknowledged replace", r.absentAfterUnackedReplace)
	}
	if r.ackPublish < r.workers*r.perWorker || r.ackRevoke < r.workers {
		t.Errorf("too little load: %d publishes and %d revokes acknowledged", r.ackPublish, r.ackRevoke)
	}
}

// fiCheckList compares root's list with the verified live entries.
func fiCheckList(t *testing.T, listJSON string, live map[string]string) int {
	t.Helper()
	var l cliList
	parseJSON(t, listJSON, &l)
	listed := map[string]bool{}
	for _, e := range l.Entries {
		ref := e.Owner + ":" + e.Name
		listed[ref] = true
		if _, ok := live[ref]; !ok {
			t.Errorf("unexpected entry %s listed", ref)
		}
	}
	for ref := range live {
		if !listed[ref] {
			t.Errorf("live entry %s is not listed", ref)
		}
	}
	return len(l.Entries)
}

// fiLogLines returns the lines of log containing any of substrs, at most max.
func fiLogLines(log string, max int, substrs ...string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		for _, s := range substrs {
			if strings.Contains(l, s) {
				out = append(out, l)
				break
			}
		}
	}
	if len(out) > max {
		out = append(out[:max], fmt.Sprintf("... %d more", len(out)-max))
	}
	return out
}

// fiRestoreNotes counts the agent's restore complaints; an fd that is
// not the file its record describes must never happen.
func fiRestoreNotes(t *testing.T, log string) string {
	t.Helper()
	var parts []string
	for _, m := range []string{"stored fd has no metadata", "stored entry has no fd", "stored entry is invalid", "discarding the stored metadata", "publish not acknowledged", "cannot keep an entry", "cannot update the stored metadata", "stored fd is not the file", "cannot identify client"} {
		if n := strings.Count(log, m); n > 0 {
			parts = append(parts, fmt.Sprintf("%q ×%d", m, n))
		}
	}
	if strings.Contains(log, "stored fd is not the file") {
		t.Errorf("the agent found an fd that is not the file its record describes:\n%s", strings.Join(fiLogLines(log, 20, "stored fd is not the file"), "\n"))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// Without systemd: SIGUSR2 hand-offs under load.
func TestFaultInjectionHandoff(t *testing.T) {
	testutil.RequireRoot(t)
	seed := fiSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	gen := buildFaultgen(t)
	a := testutil.StartAgent(t, capd, fiPolicy)
	pid := a.Cmd.Process.Pid
	base, err := testutil.CountFDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	stop := filepath.Join(dir, "stop")
	var f fiFleet
	var owners []string
	for i := range fiWorkers {
		unit := fmt.Sprintf("fi-w%d.service", i)
		owners = append(owners, unit)
		cg := testutil.NewCgroup(t, unit)
		cmd := cg.Command(gen, "work", "-socket", a.Socket, "-out", filepath.Join(dir, fmt.Sprintf("w%d.jsonl", i)),
			"-stop", stop, "-names", strconv.Itoa(fiNames), "-seed", strconv.FormatUint(seed+uint64(i)+1, 10),
			"-cli", capd, "-deadline", "90s")
		cmd.Env = a.Env()
		f.start(t, cmd)
	}
	verifier := testutil.NewCgroup(t, "fi-verify.service")

	// Half of the SIGUSR2 are followed by a second one 0 to 10 ms later,
	// while the hand-off may still be under way.
	early := true
	handoff := func(second time.Duration) bool {
		t.Helper()
		before := strings.Count(a.Log.String(), "agent serving")
		if err := a.Cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			t.Errorf("SIGUSR2: %v", err)
			return false
		}
		if second >= 0 {
			time.Sleep(second)
			a.Cmd.Process.Signal(syscall.SIGUSR2)
		}
		for deadline := time.Now().Add(15 * time.Second); strings.Count(a.Log.String(), "agent serving") <= before; time.Sleep(2 * time.Millisecond) {
			if !fiChildAlive(pid) {
				a.Cmd.Wait()
				t.Errorf("the agent died during a hand-off (%v; a second SIGUSR2 %v after the first: %v), and with it every entry; log tail:\n%s", a.Cmd.ProcessState, second, second >= 0, fiTail(a.Log.String(), 20))
				return false
			}
			if time.Now().After(deadline) {
				t.Errorf("no hand-off within 15s of SIGUSR2; log tail:\n%s", fiTail(a.Log.String(), 40))
				return false
			}
		}
		return true
	}
	time.Sleep(300 * time.Millisecond) // the workers get going
	start := time.Now()
	faults := 0
	for faults < fiFaults {
		second := time.Duration(-1)
		if early && rng.IntN(2) == 0 {
			second = time.Duration(rng.IntN(10_001)) * time.Microsecond
		}
		if !handoff(second) {
			break
		}
		faults++
		time.Sleep(time.Duration(50+rng.IntN(251)) * time.Millisecond)
		if early && !fiChildAlive(pid) {
			a.Cmd.Wait()
			t.Errorf("the agent died (%v) after a second SIGUSR2 %v into a hand-off, and with it every entry; log tail:\n%s", a.Cmd.ProcessState, second, fiTail(a.Log.String(), 20))
			break
		}
	}
	if !fiChildAlive(pid) {
		f.stopAll()
		t.FailNow()
	}
	t.Logf("%d hand-offs in %v", faults, time.Since(start).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond)
	os.WriteFile(stop, nil, 0o644)
	f.wait(t, time.Now().Add(30*time.Second))

	r := newFiReplay(t, fiWorkers, fiNames)
	for i := range fiWorkers {
		hello, done := r.worker(fiReadEvents(t, filepath.Join(dir, fmt.Sprintf("w%d.jsonl", i))))
		if !hello || !done {
			t.Errorf("worker %d: started %v, finished %v", i, hello, done)
		}
	}
	verify := func(round string) map[string]string {
		t.Helper()
		out := filepath.Join(dir, "final-"+round+".jsonl")
		cmd := verifier.Command(gen, "verify", "-socket", a.Socket, "-out", out, "-owners", strings.Join(owners, ","), "-names", strconv.Itoa(fiNames))
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("verify: %v\n%s", err, b)
		}
		return r.final(fiReadEvents(t, out), round)
	}
	live := verify("1")
	// Once more after a last hand-off with nothing going on.
	if handoff(-1) {
		faults++
	}
	live2 := verify("2")
	if len(live2) != len(live) {
		t.Errorf("%d live entries before the last hand-off, %d after", len(live), len(live2))
	}
	listed := fiCheckList(t, fiCapd(t, a, "list", "--json"), live2)
	n, err := testutil.CountFDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	if n > base+listed+8 {
		t.Errorf("the agent holds %d fds for %d entries, %d with none: orphaned fds", n, listed, base)
	}
	log := a.Log.String()
	fiKeep(t, map[string]string{"agent.log": log}, dir)
	handoffs := strings.Count(log, "restored entries from the previous agent process")
	if handoffs != faults && !early || handoffs < faults {
		t.Errorf("%d hand-offs in the agent's log, %d faults injected", handoffs, faults)
	}
	t.Logf("agent restore messages: %s", fiRestoreNotes(t, log))
	if w := fiWarnings(log, 20); len(w) > 0 {
		t.Logf("agent warnings and errors:\n%s", strings.Join(w, "\n"))
	}
	r.report(fmt.Sprintf("%d (SIGUSR2 hand-offs, the last one after the load)", faults), len(live2),
		fmt.Sprintf("agent fds %d for %d entries (%d with none)", n, listed, base))
}

// fiCapd runs capd ARGS as root in the test's cgroup and returns stdout.
func fiCapd(t *testing.T, a *testutil.Agent, args ...string) string {
	t.Helper()
	cmd := exec.Command(capd, args...)
	cmd.Env = a.Env()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("capd %v: %v", args, err)
	}
	return string(out)
}

func fiTail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// Under systemd: kill -9 of the agent, systemctl restart and SIGUSR2, mixed,
// under load.
func TestFaultInjectionSystemd(t *testing.T) {
	fiSystemd(t, fiRun{workers: fiWorkers, names: fiNames, faults: fiFaults,
		kinds: []string{"kill -9", "systemctl restart", "SIGUSR2"}, minPause: 50, maxPause: 300})
}

// Under systemd, the metadata journal: kill -9 alone, at random points of
// a stream of publishes, replaces and revokes whose records are large
// (every publish carries 4 allow patterns, 3 of them 900 bytes long), with few live
// entries, so that the journal is compacted every few changes and a kill
// lands at every stage of it: while a record is appended, between an
// entry's FDSTORE=1 and its record, between a new generation's FDSTORE=1
// and its barrier, before the old generation is dropped. Each name's
// acknowledged state must come back exactly (by its memfd's content:
// owner, name and generation), as in TestFaultInjectionSystemd; the test
// logs how many restarts found a torn record or two generations.
func TestFaultInjectionJournal(t *testing.T) {
	fiSystemd(t, fiRun{workers: 3, names: 3, faults: 40, kinds: []string{"kill -9"}, minPause: 0, maxPause: 200, serving: true,
		args: []string{"-allow", "4", "-cli-share", "0"}})
}

// fiRun is one fault-injection run under systemd: the fleet, its
// workers' extra arguments, and the faults (kinds, taken in turns and
// shuffled) with the pause after each, in milliseconds, or, if serving,
// before each, once the agent is active again.
type fiRun struct {
	workers, names, faults int
	kinds                  []string
	minPause, maxPause     int
	serving                bool
	args                   []string
}

func fiSystemd(t *testing.T, run fiRun) {
	seed := fiSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	gen := buildFaultgen(t)
	m := bootMachine(t)
	b, err := os.ReadFile(gen)
	if err != nil {
		t.Fatal(err)
	}
	m.write("/run/faultgen", string(b), 0o755)
	m.write("/etc/capd/capd.toml", fiPolicy, 0o644)
	m.must("systemctl", "reload", "capd.service")
	os.MkdirAll(m.root+"/run/fi", 0o755)
	fds := func() int {
		t.Helper()
		out := m.must("sh", "-c", fmt.Sprintf("ls /proc/%d/fd | wc -l", m.mainPID()))
		n, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("fd count %q: %v", out, err)
		}
		return n
	}
	base := fds()

	var f fiFleet
	var owners []string
	for i := range run.workers {
		owners = append(owners, fmt.Sprintf("fi-w%d.service", i))
		f.start(t, m.cmd(append([]string{"systemd-run", "--quiet", "--wait", "--collect", "--unit", fmt.Sprintf("fi-w%d", i),
			"/run/faultgen", "work", "-out", fmt.Sprintf("/run/fi/w%d.jsonl", i), "-stop", "/run/fi/stop",
			"-names", strconv.Itoa(run.names), "-seed", strconv.FormatUint(seed+uint64(i)+1, 10),
			"-cli", "/run/capd-bin", "-deadline", "150s"}, run.args...)...))
	}

	// A mixed schedule: every kind as often as the others.
	var kinds []string
	for i := range run.faults {
		kinds = append(kinds, run.kinds[i%len(run.kinds)])
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	count := map[string]int{}
	livePID := func() int {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if pid := m.mainPID(); pid > 1 {
				return pid
			}
			if time.Now().After(deadline) {
				j, _ := m.cmd("journalctl", "-u", "capd", "--no-pager", "-n", "40").CombinedOutput()
				t.Fatalf("capd.service has had no main process for 30s\n%s", j)
			}
		}
	}
	time.Sleep(time.Second) // the workers get going
	start := time.Now()
	for _, kind := range kinds {
		if run.serving {
			// A fault at a random point of the load, once the agent
			// restored and serves again (not while it starts).
			for deadline := time.Now().Add(30 * time.Second); !m.active(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("capd.service is not active again after 30s")
				}
			}
			time.Sleep(time.Duration(run.minPause+rng.IntN(run.maxPause-run.minPause+1)) * time.Millisecond)
		}
		pid := livePID()
		switch kind {
		case "kill -9":
			m.kill9(pid)
		case "systemctl restart":
			if out, err := m.cmd("systemctl", "restart", "capd.service").CombinedOutput(); err != nil {
				t.Errorf("systemctl restart: %v %s", err, out)
			}
		case "SIGUSR2":
			if out, err := m.cmd("systemctl", "kill", "--kill-whom=main", "--signal=SIGUSR2", "capd.service").CombinedOutput(); err != nil {
				t.Errorf("SIGUSR2: %v %s", err, out)
			}
		}
		count[kind]++
		if !run.serving {
			time.Sleep(time.Duration(run.minPause+rng.IntN(run.maxPause-run.minPause+1)) * time.Millisecond)
		}
	}
	t.Logf("%d faults in %v: %v", len(kinds), time.Since(start).Round(time.Millisecond), count)
	for deadline := time.Now().Add(30 * time.Second); !m.active() || m.mainPID() <= 1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			j, _ := m.cmd("journalctl", "-u", "capd", "--no-pager", "-n", "40").CombinedOutput()
			t.Fatalf("capd.service did not settle in 30s\n%s", j)
		}
	}
	time.Sleep(300 * time.Millisecond)
	m.write("/run/fi/stop", "", 0o644)
	f.wait(t, time.Now().Add(45*time.Second))

	r := newFiReplay(t, run.workers, run.names)
	for i := range run.workers {
		hello, done := r.worker(fiReadEvents(t, m.root+fmt.Sprintf("/run/fi/w%d.jsonl", i)))
		if !hello || !done {
			t.Errorf("worker %d: started %v, finished %v", i, hello, done)
		}
	}
	verify := func(round string) map[string]string {
		t.Helper()
		out := "/run/fi/final-" + round + ".jsonl"
		m.unit("fi-verify", "/run/faultgen", "verify", "-out", out, "-owners", strings.Join(owners, ","), "-names", strconv.Itoa(run.names))
		return r.final(fiReadEvents(t, m.root+out), round)
	}
	live := verify("1")
	// Once more after a last kill -9 with nothing going on: what is live
	// must be in systemd's fd store, and nothing else.
	m.killAgent()
	count["kill -9 (after the load)"]++
	live2 := verify("2")
	if len(live2) != len(live) {
		t.Errorf("%d live entries before the last kill -9, %d after", len(live), len(live2))
	}
	listed := fiCheckList(t, m.must("/run/capd-bin", "list", "--json"), live2)
	n := fds()
	if n > base+listed+8 {
		t.Errorf("the agent holds %d fds for %d entries, %d with none: orphaned fds", n, listed, base)
	}
	stored := strings.TrimSpace(m.must("systemctl", "show", "-p", "NFileDescriptorStore", "--value", "capd.service"))
	if s, err := strconv.Atoi(stored); err == nil && s != listed+1 {
		t.Errorf("systemd's fd store holds %d fds for %d entries and their metadata", s, listed)
	}

	journal := m.must("journalctl", "-u", "capd.service", "-o", "cat", "--no-pager")
	full := m.must("journalctl", "--no-pager")
	fiKeep(t, map[string]string{"journal": full}, m.root+"/run/fi")
	t.Logf("agent restarts: %d restored from systemd's fd store, %d hand-offs, %d deaths by SIGUSR2; %d found a torn journal record, %d two journal generations; restore messages: %s",
		strings.Count(journal, "restored entries from systemd's fd store"), strings.Count(journal, "restored entries from the previous agent process"),
		strings.Count(full, "code=killed, status=12/USR2"), strings.Count(journal, "ends in an incomplete record"),
		strings.Count(journal, "older metadata generations dropped"), fiRestoreNotes(t, journal))
	if w := fiWarnings(journal, 30); len(w) > 0 {
		t.Logf("agent warnings and errors:\n%s", strings.Join(w, "\n"))
	}
	if l := fiLogLines(full, 10, "Cannot store more fds"); len(l) > 0 {
		t.Errorf("systemd dropped fds the agent stored:\n%s", strings.Join(l, "\n"))
	}
	total := 0
	for _, c := range count {
		total += c
	}
	r.report(fmt.Sprintf("%d %v", total, count), len(live2),
		fmt.Sprintf("agent fds %d for %d entries (%d with none); systemd's fd store %s", n, listed, base, stored))
}

// fiWarnings returns the agent's warnings and errors but its notes on
// suppressed log lines, at most max.
func fiWarnings(log string, max int) []string {
	var out []string
	for _, l := range fiLogLines(log, len(log), "level=WARN", "level=ERROR") {
		if !strings.Contains(l, "log lines of a client suppressed") {
			out = append(out, l)
		}
	}
	if len(out) > max {
		out = append(out[:max], fmt.Sprintf("... %d more", len(out)-max))
	}
	return out
}

// fiCounts formats a histogram, largest first.
func fiCounts(m map[string]int) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return m[ks[i]] > m[ks[j]] || m[ks[i]] == m[ks[j]] && ks[i] < ks[j] })
	var b strings.Builder
	for i, k := range ks {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s ×%d", k, m[k])
	}
	return b.String()
}

// fiKeep copies the events in dir and the logs to $CAPD_FI_KEEP/TEST, if set,
// for a look after the test.
func fiKeep(t *testing.T, logs map[string]string, dir string) {
	root := os.Getenv("CAPD_FI_KEEP")
	if root == "" {
		return
	}
	to := filepath.Join(root, t.Name())
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Logf("CAPD_FI_KEEP: %v", err)
		return
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
			os.WriteFile(filepath.Join(to, e.Name()), b, 0o644)
		}
	}
	for name, text := range logs {
		os.WriteFile(filepath.Join(to, name), []byte(text), 0o644)
	}
	t.Logf("events and logs kept in %s", to)
}
