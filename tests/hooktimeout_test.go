package tests

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A stalled agent (SIGSTOPped: it accepts nothing and answers nothing)
// does not stall container creation: the hook gives up after --timeout. A
// container that does not require capd starts, with the hook's warning
// naming the timeout; a required one fails, saying the agent did not
// answer within the timeout.
func TestHookTimeoutStalledAgent(t *testing.T) {
	e := newCtrEnv(t, containerPolicy)
	if err := e.agent.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("stop the agent: %v", err)
	}
	// Cleanups run last-in first-out: this one after the runc deletes
	// registered below, and before StartAgent's stops the agent.
	t.Cleanup(func() { e.agent.Cmd.Process.Signal(syscall.SIGCONT) })

	// runc shows a hook's stderr only when the hook fails: keep a copy.
	hookLog := filepath.Join(t.TempDir(), "hook.log")
	hookArgs := []string{"sh", "-c", `err=$("$0" hook --socket "$1" --timeout 1s 2>&1); rc=$?
printf '%s\n' "$err" >>"$2"; printf '%s\n' "$err" >&2; exit $rc`, capd, e.agent.Socket, hookLog}
	bundle := func(ann map[string]string) string {
		return e.bundleHooks([]string{"echo", "started"}, ann, "/bin/sh", hookArgs, "createRuntime", "poststop")
	}
	const bound = 10 * time.Second // two hook runs of 1s each, and runc
	const said = "did not answer within the timeout of 1s"

	start := time.Now()
	r := e.runc("web-t1", bundle(map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd"}))
	if took := time.Since(start); r.code != 0 || !strings.Contains(r.stdout, "started") || took > bound {
		t.Fatalf("not required, agent stalled: exit %d after %v\nstdout: %s\nstderr: %s", r.code, took, r.stdout, r.stderr)
	}
	log, _ := os.ReadFile(hookLog)
	if !strings.Contains(string(log), "capd hook: warning: container web-t1: the capd agent at "+e.agent.Socket+" "+said) {
		t.Errorf("the hook's warning does not name the timeout:\n%s", log)
	}

	start = time.Now()
	r = e.runc("web-t2", bundle(map[string]string{"io.capd.acquire": "rpm-ostreed.service:zincati-fd", "io.capd.required": "true"}))
	if took := time.Since(start); r.code == 0 || strings.Contains(r.stdout, "started") || took > bound ||
		!strings.Contains(r.stderr, "container web-t2: the capd agent at "+e.agent.Socket+" "+said) {
		t.Fatalf("required, agent stalled: exit %d after %v\nstdout: %s\nstderr: %s", r.code, took, r.stdout, r.stderr)
	}
}
