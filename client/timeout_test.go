package client

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stalledAgent listens on a socket and never accepts or answers, like a
// SIGSTOPped agent; a backlog of 0 holds one pending connection.
func stalledAgent(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	return path
}

func isTimeout(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: %v, want an error matching ErrTimeout and os.ErrDeadlineExceeded", what, err)
	}
}

// A deadline bounds connecting (a full backlog) and the whole of a request;
// SetTimeout bounds each step. All report ErrTimeout.
func TestTimeouts(t *testing.T) {
	path := stalledAgent(t)
	const d = 100 * time.Millisecond
	within := func(what string, start time.Time) {
		t.Helper()
		if took := time.Since(start); took < d || took > d+2*time.Second {
			t.Errorf("%s took %v, want about %v", what, took, d)
		}
	}

	// The first connection fills the backlog; the agent reads nothing.
	start := time.Now()
	c, err := DialDeadline(path, start.Add(d))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Whoami()
	isTimeout(t, "whoami before the deadline", err)
	if !errors.Is(err, unix.EAGAIN) {
		t.Errorf("whoami: %v, want it to wrap the socket timeout's EAGAIN", err)
	}
	within("whoami", start)
	// Past the deadline, a request fails at once without a system call.
	start = time.Now()
	_, err = c.Whoami()
	isTimeout(t, "whoami after the deadline", err)
	if took := time.Since(start); took > d/2 {
		t.Errorf("whoami after the deadline took %v", took)
	}

	// A second connection waits for room in the backlog: bounded too.
	start = time.Now()
	c2, err := DialDeadline(path, start.Add(d))
	if err == nil {
		c2.Close()
		t.Fatal("connected to a full backlog")
	}
	isTimeout(t, "dial into a full backlog", err)
	within("dial", start)

	// SetTimeout alone, on a client without a deadline.
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetTimeout(d); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	_, err = c.List()
	isTimeout(t, "list with a timeout", err)
	within("list", start)
}
