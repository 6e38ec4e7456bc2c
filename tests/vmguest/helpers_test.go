//go:build vmguest

package vmguest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
)

// holder is a consumer: "capd acquire REF -- sleep 600" in a cgroup. File
// is a copy of its fd 3 taken with pidfd_getfd (the same open file
// description), which the test acts on; the holder ends with the test.
type holder struct {
	*os.File
	Pidfd int
	Pid   int
}

func acquireIn(t *testing.T, cg, ref string) *holder {
	t.Helper()
	cmd := inCgroup(cg, capd, "acquire", ref, "--", "sleep", "600")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(pidfd) })
	// Once sleep runs, fd 3 is the acquired one.
	deadline := time.Now().Add(30 * time.Second)
	for {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/comm")
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		select {
		case <-exited:
			t.Fatalf("capd acquire %s in /%s failed: %s", ref, cg, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("capd acquire %s in /%s did not exec in 30s: %s", ref, cg, stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	fd, err := unix.PidfdGetfd(pidfd, 3, 0)
	if err != nil {
		t.Fatalf("pidfd_getfd of %s's fd 3: %v", cg, err)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), ref+"@/"+cg)
	t.Cleanup(func() { f.Close() })
	return &holder{File: f, Pidfd: pidfd, Pid: cmd.Process.Pid}
}

func dial(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// memfd is a memfd holding content, closed when the test ends.
func memfd(t *testing.T, name, content string) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f
}

// preadErr reads f at 0 and returns what it read and the error.
func preadErr(f *os.File) (string, error) {
	b := make([]byte, 64)
	n, err := unix.Pread(int(f.Fd()), b, 0)
	return string(b[:max(n, 0)]), err
}

// wantRead fails t unless f reads want at offset 0.
func wantRead(t *testing.T, what string, f *os.File, want string) {
	t.Helper()
	got, err := preadErr(f)
	if err != nil || got != want {
		t.Errorf("%s: pread = %q, %v; want %q", what, got, err, want)
	}
}

// wantEPERM fails t unless err is EPERM.
func wantEPERM(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("%s: %v, want EPERM", what, err)
	} else {
		t.Logf("%s: EPERM, as wanted", what)
	}
}

// statusJSON is what the tests read of capd status --json.
type statusJSON struct {
	Enforcement string `json:"enforcement"`
	EnforcedBy  string `json:"enforced_by"`
	InForce     uint64 `json:"in_force"`
	Lost        uint64 `json:"lost_revocations"`
	Entries     uint64 `json:"entries"`
}

func status(t *testing.T) statusJSON {
	t.Helper()
	r := run(t, "", nil, capd, "status", "--json")
	if r.code != 0 {
		t.Fatalf("capd status --json: exit %d: %s", r.code, r.stderr)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("capd status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// enforced fails t unless the agent says revocation is enforced, and
// reports whether the file_truncate hook is attached (6.2+).
func enforced(t *testing.T) (truncate bool) {
	t.Helper()
	st := status(t)
	if st.Enforcement != "enforced" {
		t.Fatalf("status: enforcement %q (%s), want enforced: this kernel runs BPF LSM", st.Enforcement, st.EnforcedBy)
	}
	return strings.Contains(st.EnforcedBy, "file_truncate")
}

// grantID is the id of grantee's grant of name, from the agent's list;
// and check must say that f is that grant (it is the holder's copy).
// check failing is an error, not fatal: the revokes that follow do not
// depend on it.
func grantID(t *testing.T, c *client.Client, name, grantee string, f *os.File) string {
	t.Helper()
	g := grantOf(t, c, name, grantee)
	ch, err := c.Check("", name, f)
	if err != nil || ch.Grant == nil || ch.Grant.ID != g.ID {
		t.Errorf("check of %s's copy of %s = %+v, %v; want grant %s", grantee, name, ch, err, g.ID)
	}
	return g.ID
}

// grantOf is grantee's grant of the test's entry name, as list reports it.
func grantOf(t *testing.T, c *client.Client, name, grantee string) client.Grant {
	t.Helper()
	ents, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Owner != "cgroup:/pub" || e.Name != name {
			continue
		}
		for _, g := range e.Grants {
			if g.Grantee == grantee && !slices.Contains(g.Restrict, "revoked") {
				return g
			}
		}
		t.Fatalf("no grant of %s for %s in list: %+v", name, grantee, e.Grants)
	}
	t.Fatalf("%s is not in list", name)
	return client.Grant{}
}

// reopen opens /proc/self/fd/N of f: a fresh open file description of the
// same file, unless the kernel refuses it.
func reopen(f *os.File) error {
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	b := make([]byte, 8)
	if _, err := unix.Pread(fd, b, 0); err != nil {
		return fmt.Errorf("opened, but pread: %w", err)
	}
	return nil
}

// timed logs how long the test took, for the guest's timings.
func timed(t *testing.T) {
	start := time.Now()
	t.Cleanup(func() { t.Logf("took %v", time.Since(start).Round(time.Millisecond)) })
}
