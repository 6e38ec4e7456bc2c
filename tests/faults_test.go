package tests

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capd-dev/capd/client"
)

// At the connection limit every refused client gets its busy reply (exit
// 8), never a reset that leaves it guessing whether the request took
// effect (issue: 11 of 20 tries ended in a reset, exit 1).
func TestBusyReplyArrives(t *testing.T) {
	e := newEnv(t, "[agent]\nmax_connections_per_uid = 2\n")
	// Hold both slots (the start-up probes' connections may still count
	// for a moment: busy is retried).
	for range 2 {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			c, err := client.Dial(e.agent.Socket)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Whoami()
			if err == nil {
				defer c.Close()
				break
			}
			c.Close()
			if !errors.Is(err, client.ErrBusy) || time.Now().After(deadline) {
				t.Fatal(err)
			}
		}
	}
	codes := map[int]int{}
	for range 40 {
		r := e.run("", nil, "whoami")
		codes[r.code]++
		if r.code != 8 {
			t.Logf("exit %d: %s", r.code, r.stderr)
		}
	}
	if codes[8] != 40 {
		t.Fatalf("exit codes of 40 refused clients: %v, want all 8 (busy)", codes)
	}
}

// capd reload reports what the agent loaded, or why it kept the old
// configuration; a FIFO or /dev/zero in conf.d is refused at once instead of
// blocking the agent or growing it without bound, and the agent still stops
// on SIGTERM.
func TestReloadReportsAndRefusesNonRegularFiles(t *testing.T) {
	e := newEnv(t, "", "rpm-ostreed.service", "zincati.service")
	e.publishFile("rpm-ostreed.service", "zincati-fd", "z")
	r := e.mustRun("", nil, "reload")
	if !strings.Contains(r.stdout, "reloaded 0 grants and 0 quotas from "+e.agent.Config) {
		t.Errorf("reload said %q", r.stdout)
	}
	if err := os.WriteFile(e.agent.Config, []byte(seedPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := e.mustRun("", nil, "reload"); !strings.Contains(r.stdout, "reloaded 2 grants") {
		t.Errorf("reload said %q", r.stdout)
	}
	e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true")

	confd := filepath.Join(filepath.Dir(e.agent.Config), "conf.d")
	os.Mkdir(confd, 0o755)
	if err := syscall.Mkfifo(filepath.Join(confd, "zz.toml"), 0o644); err != nil {
		t.Fatal(err)
	}
	expectFail(t, e.run("", nil, "reload"), 1, "invalid-config", "zz.toml", "not a regular file", "stays")
	os.Remove(filepath.Join(confd, "zz.toml"))
	if err := os.Symlink("/dev/zero", filepath.Join(confd, "zero.toml")); err != nil {
		t.Fatal(err)
	}
	expectFail(t, e.run("", nil, "reload"), 1, "zero.toml", "not a regular file")
	// The old policy stays in force.
	e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true")
	// Only host administrators reload.
	expectFail(t, e.runAs("", 65534, nil, "reload"), 4, "host administrator")
	// SIGHUP with the FIFO back in place does not block the agent either.
	os.Remove(filepath.Join(confd, "zero.toml"))
	syscall.Mkfifo(filepath.Join(confd, "zz.toml"), 0o644)
	e.agent.Cmd.Process.Signal(syscall.SIGHUP)
	e.agent.WaitLog(t, "reload failed", 0)
	done := make(chan struct{})
	go func() { e.agent.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the agent did not stop after SIGHUP with a FIFO in conf.d")
	}
}
