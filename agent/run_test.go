package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

// runOptions are Options for an agent in dir that stays in the test's
// mount namespace (no re-exec of the test binary).
func runOptions(t *testing.T, dir string) Options {
	t.Helper()
	testutil.RequireRoot(t)
	t.Setenv(nsMarker, strconv.Itoa(os.Getpid()))
	return Options{
		ConfigPath:      filepath.Join(dir, "missing.toml"),
		ConfigMissingOK: true,
		SocketPath:      filepath.Join(dir, "s"),
		Log:             slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// TestRunRefusesLiveAgent: a live listener on the socket path is an error
// wrapping ErrAgentRunning, which capd agent maps to its busy exit code.
func TestRunRefusesLiveAgent(t *testing.T) {
	dir := t.TempDir()
	opts := runOptions(t, dir)
	l, err := Listen(opts.SocketPath)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := Run(context.Background(), opts); !errors.Is(err, ErrAgentRunning) {
		t.Fatalf("Run on a live socket: %v, want ErrAgentRunning", err)
	}
}

// TestRunStopsOnCancel: Run serves until its context is done, then shuts
// down cleanly.
func TestRunStopsOnCancel(t *testing.T) {
	dir := t.TempDir()
	opts := runOptions(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: opts.SocketPath})
		unix.Close(fd)
		if err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not serving on %s: %v", opts.SocketPath, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
