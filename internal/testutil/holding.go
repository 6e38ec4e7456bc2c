package testutil

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// Holding starts a process that holds files at fds 3, 4, ... until the
// test ends or stop is called; uid >= 0 runs it as that uid (and gid).
func Holding(t testing.TB, uid int, files ...*os.File) (pid int, stop func()) {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.ExtraFiles = files
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	t.Cleanup(stop)
	return cmd.Process.Pid, stop
}
