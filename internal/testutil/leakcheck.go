package testutil

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// leakSettle is how long LeakCheck waits for finalizers to close dropped
// files and for ending goroutines to return.
const leakSettle = 2 * time.Second

// LeakCheck runs m and fails the test binary if the tests left behind an
// fd or a goroutine that was not there before them. Use it as TestMain:
// os.Exit(testutil.LeakCheck(m)).
//
// Fds of every kind (eventfd, epoll and pidfd included) are compared by
// number and target (/proc/self/fd/N): one opened and not closed, one
// closed that was open before (a double close closes someone else's fd),
// and a number that names another file now all count. The Go runtime opens
// fds of its own lazily, on first use of its poller (an epoll instance and
// an eventfd): LeakCheck opens and closes a pipe first, so that they exist
// before the 'before' snapshot and the two snapshots must be equal.
//
// Goroutines are compared by id: every goroutine running after the tests
// must have run before them. The one exception is os/signal's watcher,
// started by the first signal.Notify and never stopped by anything.
//
// Finalizers (of dropped *os.File) and goroutines that are returning get
// up to two seconds, with garbage collections, to finish.
func LeakCheck(m *testing.M) int {
	if err := warmPoller(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: leak check: %v\n", err)
		return 1
	}
	fdsBefore := FDs()
	gBefore := goroutines()
	code := m.Run()

	var fdLeaks, gLeaks []string
	for deadline := time.Now().Add(leakSettle); ; {
		runtime.GC()
		fdLeaks = fdDiff(fdsBefore, FDs())
		gLeaks = goroutineDiff(gBefore, goroutines())
		if len(fdLeaks) == 0 && len(gLeaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(fdLeaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: leak check: the tests left %d fds changed:\n\t%s\n", len(fdLeaks), strings.Join(fdLeaks, "\n\t"))
	}
	if len(gLeaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: leak check: the tests left %d goroutines running (%d before, %d now):\n\n%s\n\n",
			len(gLeaks), len(gBefore), runtime.NumGoroutine(), strings.Join(gLeaks, "\n\n"))
	}
	if code == 0 && (len(fdLeaks) > 0 || len(gLeaks) > 0) {
		return 1
	}
	return code
}

// warmPoller makes the runtime create its poller's fds, which it opens on
// the first pollable file and keeps for the life of the process.
func warmPoller() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start the runtime poller: %w", err)
	}
	r.Close()
	w.Close()
	return nil
}

// fdDiff describes every difference between two FDs snapshots.
func fdDiff(before, after map[int]string) []string {
	var out []string
	for fd, t := range after {
		switch was, ok := before[fd]; {
		case !ok:
			out = append(out, fmt.Sprintf("fd %d -> %s: opened and not closed", fd, t))
		case was != t:
			out = append(out, fmt.Sprintf("fd %d -> %s: was %s before the tests", fd, t, was))
		}
	}
	for fd, t := range before {
		if _, ok := after[fd]; !ok {
			out = append(out, fmt.Sprintf("fd %d -> %s: open before the tests, closed by them", fd, t))
		}
	}
	slices.Sort(out)
	return out
}

// goroutines returns the stack of every goroutine by id.
func goroutines() map[uint64]string {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[uint64]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		// "goroutine 7 [chan receive]:\n..."
		rest, ok := strings.CutPrefix(g, "goroutine ")
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, " ")
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			continue
		}
		out[n] = strings.TrimSpace(g)
	}
	return out
}

// goroutineDiff returns the stacks of the goroutines in after that were
// not in before, but for the standard library's lazily started ones.
func goroutineDiff(before, after map[uint64]string) []string {
	var ids []uint64
	for id, stack := range after {
		if _, ok := before[id]; !ok && !lazyStd(stack) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = after[id]
	}
	return out
}

// lazyStd reports whether a goroutine is one the standard library starts
// on first use and never ends: os/signal's loop, started by the first
// signal.Notify.
func lazyStd(stack string) bool {
	return strings.Contains(stack, "\nos/signal.loop()") && strings.Contains(stack, "\ncreated by os/signal.Notify")
}
