package agent

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/run/capd/capd.sock"

// ErrAgentRunning reports a live agent already listening on the socket path.
var ErrAgentRunning = errors.New("another agent is already listening")

// Listener owns a listening SOCK_SEQPACKET socket and, when it created it,
// the socket file.
type Listener struct {
	fd   int
	path string // removed by Close; "" for an inherited socket
	ino  uint64
}

// Listen binds path. A live agent on path is an error (ErrAgentRunning); a
// stale socket file left by a dead agent is removed. The socket is
// world-connectable (0666): who may do what is decided per request from the
// kernel's identity of the peer.
func Listen(path string) (*Listener, error) {
	fd, ino, err := linux.ListenUnix(path, unix.SOCK_SEQPACKET, 128)
	if errors.Is(err, linux.ErrSocketInUse) {
		return nil, fmt.Errorf("%s: %w", path, ErrAgentRunning)
	}
	if err != nil {
		return nil, err
	}
	l := &Listener{fd: fd, path: path, ino: ino}
	// Only root can connect until now; from here on everyone can, and
	// connections queue until Serve accepts them.
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return l, nil
}

// FileListener adopts an inherited listening socket (socket activation). It
// takes ownership of fd.
func FileListener(fd int) (*Listener, error) {
	typ, err := linux.SocketType(fd)
	if err != nil {
		linux.Close(fd)
		return nil, err
	}
	if typ != unix.SOCK_SEQPACKET {
		linux.Close(fd)
		return nil, fmt.Errorf("inherited fd %d is not a SOCK_SEQPACKET socket (use ListenSequentialPacket=)", fd)
	}
	if err := linux.SetCloexec(fd); err != nil {
		linux.Close(fd)
		return nil, err
	}
	return &Listener{fd: fd}, nil
}

// FD returns the listening socket, which the Listener still owns (for a
// hand-off to the next agent process).
func (l *Listener) FD() int { return l.fd }

// Close closes the socket and removes its file if it is still ours.
func (l *Listener) Close() error {
	if l.path != "" {
		var st unix.Stat_t
		if linux.Stat(l.path, &st) == nil && st.Ino == l.ino {
			os.Remove(l.path)
		}
	}
	return linux.Close(l.fd)
}
