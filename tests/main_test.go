// Package tests holds capd's end-to-end tests: the real capd binary, real
// processes in real cgroup v2 cgroups, real SCM_RIGHTS. They need root and
// fail (never skip) without it.
package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/testutil"
)

// capd and capdNRI are the binaries under test, built once by TestMain.
var capd, capdNRI string

func TestMain(m *testing.M) {
	if role := os.Getenv("CAPD_TEST_ROLE"); role != "" {
		os.Exit(runRole(role))
	}
	dir, err := os.MkdirTemp("", "capd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // runnable by the uids some tests switch to
	root, _ := filepath.Abs("..")
	capd, err = testutil.BuildCapd(root, dir)
	if err == nil {
		capdNRI, err = testutil.Build(root, dir, "./cmd/capd-nri")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := testutil.LeakCheck(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// runRole runs the test binary as a helper program.
func runRole(role string) int {
	switch role {
	case "listen-env":
		// Report what a socket-activated program would see.
		fds := map[string]string{}
		nonblock := map[string]bool{}
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			n, _ := strconv.Atoi(e.Name())
			t, err := os.Readlink("/proc/self/fd/" + e.Name())
			if err != nil || n <= 2 {
				continue
			}
			// Fds this runtime opened carry FD_CLOEXEC; inherited ones cannot.
			if fl, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC != 0 {
				continue
			}
			fds[e.Name()] = t
			fl, _ := unix.FcntlInt(uintptr(n), unix.F_GETFL, 0)
			nonblock[e.Name()] = fl&unix.O_NONBLOCK != 0
		}
		out := map[string]any{
			"pid":            os.Getpid(),
			"LISTEN_FDS":     os.Getenv("LISTEN_FDS"),
			"LISTEN_FDNAMES": os.Getenv("LISTEN_FDNAMES"),
			"LISTEN_PID":     os.Getenv("LISTEN_PID"),
			"fds":            fds,
			"nonblock":       nonblock,
		}
		json.NewEncoder(os.Stdout).Encode(out)
		return 0
	case "attack":
		// Try every way to another process's fds; print what each gave.
		pid, _ := strconv.Atoi(os.Getenv("CAPD_TEST_PID"))
		fd, _ := strconv.Atoi(os.Getenv("CAPD_TEST_FD"))
		res := map[string]string{}
		errno := func(err error) string {
			if err == nil {
				return "ok"
			}
			var e unix.Errno
			if errors.As(err, &e) {
				return unix.ErrnoName(e)
			}
			return err.Error()
		}
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		_, err := os.ReadDir(dir)
		res["readdir"] = errno(err)
		_, err = os.Readlink(fmt.Sprintf("%s/%d", dir, fd))
		res["readlink"] = errno(err)
		f, err := os.Open(fmt.Sprintf("%s/%d", dir, fd))
		if err == nil {
			f.Close()
		}
		res["reopen"] = errno(err)
		pidfd, err := unix.PidfdOpen(pid, 0)
		res["pidfd_open"] = errno(err)
		if err == nil {
			got, err := unix.PidfdGetfd(pidfd, fd, 0)
			if err == nil {
				unix.Close(got)
			}
			res["pidfd_getfd"] = errno(err)
			unix.Close(pidfd)
		}
		_, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(pid), 0 /* KCMP_FILE */, 0, uintptr(fd), 0)
		res["kcmp"] = errno(errnoErr(e))
		if os.Getenv("CAPD_TEST_PTRACE") == "1" {
			err = unix.PtraceSeize(pid)
			if err == nil {
				unix.PtraceDetach(pid)
			}
			res["ptrace"] = errno(err)
		}
		json.NewEncoder(os.Stdout).Encode(res)
		return 0
	case "persist-bench":
		return persistBenchRole()
	case "publish-memfds":
		return publishMemfdsRole()
	case "sendback":
		// Send fd 3 (a capability from capd acquire) to $CAPD_TEST_BACK.
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Connect(fd, &unix.SockaddrUnix{Name: os.Getenv("CAPD_TEST_BACK")})
		}
		if err == nil {
			err = fdpass.Send(fd, []byte("request"), 3)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
	return 2
}
