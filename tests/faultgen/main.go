// Command faultgen is the load of capd's fault-injection test
// (tests/faultinject_test.go). It is built by the test (CGO_ENABLED=0, so
// that it also runs inside a systemd-nspawn machine) and run in two roles:
//
//	faultgen work   -out FILE -stop FILE [-names N] [-seed S] [-cli CAPD] [-allow N] ...
//	faultgen verify -out FILE -owners A,B,... [-names N] ...
//
// work runs in one service's cgroup, owns the names n00..nNN of that
// identity and publishes (pinned, a memfd holding "OWNER/NAME/GEN"),
// replaces, revokes and reads them back until the stop file appears or its
// deadline passes, through the Go client and, for a share of the changes,
// through the capd CLI. It reconnects across agent restarts and writes every
// request and its outcome, one JSON line each, to FILE as it happens: the
// test replays them. An outcome is "ok" only when the agent acknowledged the
// request; "exists" and "notfound" are the agent's definite answers; every
// other failure ("busy", "unreachable", "ambiguous") may or may not have
// taken effect, and the next request on that name reads it back first.
//
// verify acquires every OWNER:NAME once (it needs a grant for them) and
// writes what it found.
//
// Fd ownership: each publish creates one memfd and closes it after the
// request, whatever its outcome; each read closes the fd it acquired.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
)

// Event is one request and its outcome, as the test reads it.
type Event struct {
	Seq     int    `json:"seq"`
	T       int64  `json:"t_us"` // since the worker started
	Op      string `json:"op"`   // hello, publish, replace, revoke, read, final, done
	Owner   string `json:"owner,omitempty"`
	Name    string `json:"name,omitempty"`
	Content string `json:"content,omitempty"` // publish: what was sent; read: what came back
	Via     string `json:"via,omitempty"`     // lib or cli
	Res     string `json:"res"`               // ok, exists, notfound, busy, unreachable, ambiguous
	Err     string `json:"err,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: faultgen work|verify [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "work":
		err = work(os.Args[2:])
	case "verify":
		err = verify(os.Args[2:])
	default:
		err = fmt.Errorf("unknown role %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "faultgen:", err)
		os.Exit(1)
	}
}

// recorder appends events to a file, one write(2) per line, so that what
// was written survives the worker being killed.
type recorder struct {
	f     *os.File
	seq   int
	start time.Time
}

func newRecorder(path string) (*recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return &recorder{f: f, start: time.Now()}, nil
}

func (r *recorder) put(ev Event) {
	r.seq++
	ev.Seq, ev.T = r.seq, time.Since(r.start).Microseconds()
	b, _ := json.Marshal(ev)
	r.f.Write(append(b, '\n'))
}

// classify maps a client error to an outcome.
func classify(err error) string {
	var se *os.SyscallError
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, client.ErrExists):
		return "exists"
	case errors.Is(err, client.ErrNotFound):
		return "notfound"
	case errors.Is(err, client.ErrBusy):
		return "busy"
	case errors.As(err, &se) && se.Syscall == "connect":
		return "unreachable"
	}
	return "ambiguous"
}

// classifyExit maps a capd CLI exit code to an outcome (README: Exit codes).
func classifyExit(code int) string {
	switch code {
	case 0:
		return "ok"
	case 3:
		return "unreachable"
	case 5:
		return "notfound"
	case 6:
		return "exists"
	case 8:
		return "busy"
	}
	return "ambiguous"
}

// belief is what a worker knows of one of its names.
type belief int

const (
	unsure belief = iota
	absent
	present
)

type worker struct {
	c       *client.Client
	rec     *recorder
	rng     *rand.Rand
	owner   string
	socket  string
	cli     string
	cliPart float64
	gen     int
	timeout time.Duration
	allow   []string // the library's publishes' allow patterns
}

func work(args []string) error {
	fs := flag.NewFlagSet("work", flag.ContinueOnError)
	socket := fs.String("socket", client.SocketPath(), "agent socket")
	out := fs.String("out", "", "event file")
	stop := fs.String("stop", "", "stop once this file exists")
	names := fs.Int("names", 12, "names owned")
	seed := fs.Uint64("seed", 1, "random seed")
	pause := fs.Duration("pause", time.Millisecond, "longest random pause between requests")
	deadline := fs.Duration("deadline", 2*time.Minute, "stop after this long in any case")
	cli := fs.String("cli", "", "capd binary for a share of the changes (none: library only)")
	cliPart := fs.Float64("cli-share", 0.25, "share of the changes made through the CLI")
	timeout := fs.Duration("timeout", 20*time.Second, "bound on one request")
	allow := fs.Int("allow", 0, "publish through the library with this many allow patterns (fi-*.service, then 900-byte ones that match nothing): large records")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *stop == "" {
		return errors.New("work needs -out and -stop")
	}
	rec, err := newRecorder(*out)
	if err != nil {
		return err
	}
	defer rec.f.Close()
	end := time.Now().Add(*deadline)
	var stopped atomic.Bool
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)
	go func() {
		for !stopped.Load() {
			select {
			case <-sigs:
				stopped.Store(true)
			case <-time.After(20 * time.Millisecond):
				if _, err := os.Stat(*stop); err == nil || time.Now().After(end) {
					stopped.Store(true)
				}
			}
		}
	}()

	w := &worker{rec: rec, rng: rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15)), socket: *socket, cli: *cli, cliPart: *cliPart, timeout: *timeout}
	for i := range *allow {
		p := "fi-*.service"
		if i > 0 {
			p = fmt.Sprintf("pad-%d-%s.service", i, strings.Repeat("x", 880))
		}
		w.allow = append(w.allow, p)
	}
	// Connect and learn the identity the agent sees, through restarts.
	for {
		if w.c == nil {
			if c, err := client.Dial(*socket); err == nil {
				c.SetTimeout(*timeout)
				w.c = c
			}
		}
		if w.c != nil {
			if id, err := w.c.Whoami(); err == nil {
				w.owner = id.Name
				break
			}
		}
		if stopped.Load() {
			return errors.New("stopped before the agent answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer w.c.Close()
	rec.put(Event{Op: "hello", Owner: w.owner, Res: "ok"})

	state := make([]belief, *names)
	for !stopped.Load() {
		i := w.rng.IntN(*names)
		name := fmt.Sprintf("n%02d", i)
		switch state[i] {
		case unsure:
			state[i] = w.read(name)
		case absent:
			if w.rng.Float64() < 0.1 {
				state[i] = w.revoke(name) // expect notfound
			} else {
				state[i] = w.publish(name, false)
			}
		case present:
			switch r := w.rng.Float64(); {
			case r < 0.45:
				state[i] = w.publish(name, true)
			case r < 0.8:
				state[i] = w.revoke(name)
			case r < 0.93:
				state[i] = w.read(name)
			default:
				state[i] = w.publish(name, false) // expect exists
			}
		}
		if state[i] == unsure {
			time.Sleep(20 * time.Millisecond) // the agent is restarting, or busy
		}
		if *pause > 0 {
			time.Sleep(time.Duration(w.rng.Int64N(int64(*pause) + 1)))
		}
	}
	rec.put(Event{Op: "done", Owner: w.owner, Res: "ok"})
	return nil
}

// read acquires one of the worker's own names and reads it back.
func (w *worker) read(name string) belief {
	content, err := acquireContent(w.c, w.owner, name)
	ev := Event{Op: "read", Owner: w.owner, Name: name, Via: "lib", Res: classify(err), Content: content}
	if err != nil && ev.Res != "notfound" {
		ev.Err = err.Error()
	}
	w.rec.put(ev)
	switch ev.Res {
	case "ok":
		return present
	case "notfound":
		return absent
	}
	return unsure
}

// acquireContent acquires owner:name and returns what its file holds.
// pread leaves the offset, which every holder of the file shares, alone.
func acquireContent(c *client.Client, owner, name string) (string, error) {
	f, err := c.Acquire(owner, name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := make([]byte, 512)
	n, err := f.ReadAt(b, 0)
	if n == 0 && err != nil {
		return "", fmt.Errorf("read %s:%s: %w", owner, name, err)
	}
	return string(b[:n]), nil
}

func (w *worker) publish(name string, replace bool) belief {
	w.gen++
	content := fmt.Sprintf("%s/%s/%d", w.owner, name, w.gen)
	op := "publish"
	if replace {
		op = "replace"
	}
	fd, err := unix.MemfdCreate("faultgen", unix.MFD_CLOEXEC)
	if err != nil {
		panic(err) // nothing sent: the test sees the worker die
	}
	f := os.NewFile(uintptr(fd), "memfd")
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		panic(err)
	}
	ev := Event{Op: op, Owner: w.owner, Name: name, Content: content}
	if w.cli != "" && w.rng.Float64() < w.cliPart {
		args := []string{"publish", name, "--fd", "3", "--pin"}
		if replace {
			args = append(args, "--replace")
		}
		ev.Via = "cli"
		ev.Res, ev.Err = w.runCLI(args, f)
	} else {
		ev.Via = "lib"
		err := w.c.Publish(name, f, &client.PublishOptions{Pin: true, Replace: replace, Allow: w.allow})
		ev.Res = classify(err)
		if err != nil {
			ev.Err = err.Error()
		}
	}
	w.rec.put(ev)
	if ev.Res == "ok" || ev.Res == "exists" {
		return present
	}
	return unsure
}

func (w *worker) revoke(name string) belief {
	ev := Event{Op: "revoke", Owner: w.owner, Name: name}
	if w.cli != "" && w.rng.Float64() < w.cliPart {
		ev.Via = "cli"
		ev.Res, ev.Err = w.runCLI([]string{"revoke", name}, nil)
	} else {
		ev.Via = "lib"
		err := w.c.Revoke(name)
		ev.Res = classify(err)
		if err != nil {
			ev.Err = err.Error()
		}
	}
	w.rec.put(ev)
	if ev.Res == "ok" || ev.Res == "notfound" {
		return absent
	}
	return unsure
}

// runCLI runs capd ARGS in the worker's cgroup with f (if any) at fd 3.
func (w *worker) runCLI(args []string, f *os.File) (res, errText string) {
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.cli, args...)
	cmd.Env = append(os.Environ(), "CAPD_SOCKET="+w.socket)
	if f != nil {
		cmd.ExtraFiles = []*os.File{f}
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return "ok", ""
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return classifyExit(ee.ExitCode()), fmt.Sprintf("exit %d (pid %d): %s", ee.ExitCode(), ee.Pid(), strings.TrimSpace(string(out)))
	}
	return "ambiguous", err.Error()
}

func verify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	socket := fs.String("socket", client.SocketPath(), "agent socket")
	out := fs.String("out", "", "event file")
	owners := fs.String("owners", "", "comma-separated owner identities")
	names := fs.Int("names", 12, "names per owner")
	deadline := fs.Duration("deadline", 30*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rec, err := newRecorder(*out)
	if err != nil {
		return err
	}
	defer rec.f.Close()
	end := time.Now().Add(*deadline)
	var c *client.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for _, owner := range strings.Split(*owners, ",") {
		for i := 0; i < *names; i++ {
			name := fmt.Sprintf("n%02d", i)
			for {
				if c == nil {
					if c, err = client.Dial(*socket); err == nil {
						c.SetTimeout(10 * time.Second)
					} else {
						c = nil
					}
				}
				var content string
				res := "unreachable"
				if c != nil {
					content, err = acquireContent(c, owner, name)
					res = classify(err)
				}
				if res == "ok" || res == "notfound" || time.Now().After(end) {
					ev := Event{Op: "final", Owner: owner, Name: name, Res: res, Content: content}
					if err != nil && res != "notfound" {
						ev.Err = err.Error()
					}
					rec.put(ev)
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	return nil
}
