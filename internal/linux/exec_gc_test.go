package linux_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/capd-dev/capd/internal/linux"
)

// execUnderGC is the child of TestExecWithFDsUnderGC: with the network
// poller in use and a collection due at every allocation (GOGC=1), it
// moves memfds over fds 3 and up (where the runtime's epoll instance sits)
// and execs with an environment whose conversion allocates a lot.
func execUnderGC() {
	r, w, err := os.Pipe() // pipes are polled: the runtime's epoll instance exists
	if err != nil {
		os.Exit(10)
	}
	defer r.Close()
	defer w.Close()
	var fds []int
	for range 8 {
		fd, err := linux.MemfdCreate("gc")
		if err != nil {
			os.Exit(11)
		}
		fds = append(fds, fd)
	}
	env := []string{"PATH=/usr/bin:/bin"}
	for i := range 20000 {
		env = append(env, fmt.Sprintf("CAPD_PAD_%d=%s", i, strings.Repeat("x", 64)))
	}
	err = linux.ExecWithFDs("/bin/true", []string{"true"}, env, fds, false)
	fmt.Fprintln(os.Stderr, err)
	os.Exit(12)
}

// A collection during ExecWithFDs's exec must not poll the fd table it
// rearranged: the child execs /bin/true, every time.
func TestExecWithFDsUnderGC(t *testing.T) {
	for i := range 20 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "CAPD_TEST_EXEC_UNDER_GC=1", "GOGC=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("run %d: the exec failed: %v\n%s", i, err, out)
		}
	}
}
