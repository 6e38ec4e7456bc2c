package client

import (
	"github.com/capd-dev/capd/internal/linux"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

func passThroughSocket(t *testing.T, f *os.File) *os.File {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	if err := fdpass.Send(sp[0], []byte{1}, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	_, fds, err := fdpass.Recv(sp[1], buf, make([]byte, fdpass.OOBSize(2)), nil, 1)
	if err != nil || len(fds) != 1 {
		t.Fatalf("recv: %v %v", fds, err)
	}
	return os.NewFile(uintptr(fds[0]), "passed")
}

func testVerify(t *testing.T) {
	tok, err := NewToken("t")
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	a := tok.File()
	dupfd, err := unix.FcntlInt(a.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	dup := os.NewFile(uintptr(dupfd), "dup")
	defer dup.Close()
	passed := passThroughSocket(t, a)
	defer passed.Close()
	reopened, err := os.Open("/proc/self/fd/" + strconv.Itoa(int(a.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer reopened.Close()
	other, err := NewToken("t")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	for _, tc := range []struct {
		name string
		f    *os.File
		want bool
	}{
		{"itself", a, true},
		{"dup", dup, true},
		{"passed over SCM_RIGHTS", passed, true},
		{"reopened via /proc/self/fd", reopened, false},
		{"another memfd", other.File(), false},
	} {
		got, err := Verify(a, tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got != tc.want {
			t.Errorf("Verify(token, %s) = %v, want %v", tc.name, got, tc.want)
		}
		if ok, _ := tok.Check(tc.f); ok != tc.want {
			t.Errorf("Check(%s) = %v, want %v", tc.name, ok, tc.want)
		}
	}
	tok.Close()
	if ok, err := tok.Check(dup); ok || err != nil {
		t.Errorf("closed token still checks: %v %v", ok, err)
	}
}

// TestVerify runs on F_DUPFD_QUERY, which this kernel must have (>= 6.10);
// internal/linux's TestSameDescriptionKcmp covers the kcmp(2) fallback.
func TestVerify(t *testing.T) {
	if _, err := linux.DupfdQuery(0, 0); err != nil {
		t.Fatalf("F_DUPFD_QUERY is missing (%v): this test machine must run Linux >= 6.10", err)
	}
	testVerify(t)
}
