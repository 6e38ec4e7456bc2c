package fdpass

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Preallocated errors for EAGAIN, which a Conn's socket returns at the end
// of every hold: so that it allocates nothing. They match unix.EAGAIN like
// every other error of this package matches its errno.
var (
	errRecvAgain = os.NewSyscallError("recvmsg", unix.EAGAIN)
	errSendAgain = os.NewSyscallError("sendmsg", unix.EAGAIN)
)

// holdTime is how long a held Recv waits in a blocking recvmsg before it
// parks: SO_RCVTIMEO, which the kernel rounds up to a whole tick and ends
// at a tick (so after up to 4 ms at HZ=250, 1 ms at HZ=1000).
const holdTime = time.Millisecond

// Conn is a connected socket whose idle waits hold no OS thread. Its Recv
// and Send make the same recvmsg(2) and sendmsg(2) calls as the functions
// above; where those would block the calling thread for as long as the
// peer takes, a Conn parks the calling goroutine on the Go runtime's
// network poller.
//
// Parking costs more than blocking: waking a goroutine parked on the
// poller took 1.3 to 1.6 times as long as waking a thread blocked in
// recvmsg in a ping-pong on a 2-core VM, which a client that sends its
// next request right after a reply would pay at every request. And a
// socket the poller watches wakes the poller's thread at every message
// and every reply read, whether a goroutine waits or not (which cost an
// active connection about 5 % per round trip). So a Recv of a Conn made
// with a Holds first waits in a blocking recvmsg of about a tick, if the
// Holds has room; only when nothing came by then does it park, on a
// duplicate of the socket put on the poller for that wait alone (one more
// fd while parked). Connections served within the last tick hold a thread,
// at most as many at once as the Holds allows; idle ones hold a parked
// goroutine. A Send that finds the peer's queue full parks the same way.
//
// Fd ownership: a Conn owns its socket; Close closes it once, and calls
// after Close fail. A park's duplicate is the park's, closed before Recv
// or Send returns. One goroutine at a time may Recv or Send, and only it
// may Close; Shutdown may come from any goroutine at any time (a lock
// keeps it from reaching a number that Close freed and the process
// reused).
type Conn struct {
	holds                    *Holds // nil: never hold a thread
	recvTimeout, sendTimeout time.Duration

	mu sync.Mutex // guards fd against Shutdown; the owner reads it freely
	fd int        // -1 once closed
}

// Holds bounds how many Conns may hold a thread in a blocking recvmsg at
// once (see Conn); the Conns sharing one share the bound.
type Holds struct {
	held, max atomic.Int32
}

// NewHolds returns a Holds that lets max Conns hold a thread at once.
func NewHolds(max int) *Holds {
	h := &Holds{}
	h.max.Store(int32(max))
	return h
}

func (h *Holds) take() bool {
	if h.held.Add(1) <= h.max.Load() {
		return true
	}
	h.held.Add(-1)
	return false
}

func (h *Holds) put() { h.held.Add(-1) }

// NewConn takes ownership of the connected blocking socket fd, even on
// error (it is closed then). holds, if not nil, lets its Recvs hold a
// thread for a tick before parking.
func NewConn(fd int, holds *Holds) (*Conn, error) {
	if holds != nil {
		tv := unix.NsecToTimeval(holdTime.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return nil, os.NewSyscallError("setsockopt SO_RCVTIMEO", err)
		}
	}
	return &Conn{fd: fd, holds: holds}, nil
}

// SetRecvTimeout bounds each later Recv's wait for a message to d (none if
// d <= 0), as SO_RCVTIMEO does for a blocking socket; a Recv that times
// out returns an error matching os.ErrDeadlineExceeded. The timeout counts
// from when the Recv parks, so a held Recv waits up to a tick longer.
func (c *Conn) SetRecvTimeout(d time.Duration) { c.recvTimeout = d }

// SetSendTimeout bounds each later Send's wait for room in the peer's
// queue to d (none if d <= 0), as SO_SNDTIMEO does for a blocking socket;
// a Send that times out returns an error matching os.ErrDeadlineExceeded.
func (c *Conn) SetSendTimeout(d time.Duration) { c.sendTimeout = d }

// errClosed is what calls on a closed Conn return.
var errClosed = fmt.Errorf("fdpass: %w", os.ErrClosed)

// Recv is the package's Recv on c: held for a tick if c's Holds has room,
// then parked on the poller until a message arrives.
func (c *Conn) Recv(buf, oob []byte, fds []int, max int) (n int, out []int, err error) {
	if c.fd < 0 {
		return 0, fds, errClosed
	}
	err = errRecvAgain
	if c.holds != nil && c.holds.take() {
		n, out, err = RecvFlags(c.fd, buf, oob, fds, max, 0)
		c.holds.put()
	}
	if err != errRecvAgain {
		return n, out, err
	}
	perr := c.park(false, c.recvTimeout, func(fd int) bool {
		n, out, err = RecvFlags(fd, buf, oob, fds, max, unix.MSG_DONTWAIT)
		return err != errRecvAgain
	})
	// A park fails only before a call or after one that would have blocked
	// (and so received no fds).
	if perr != nil {
		return 0, fds, perr
	}
	return n, out, err
}

// Send is the package's Send on c. It makes one attempt and, only if the
// peer's queue is full, parks until there is room.
func (c *Conn) Send(buf []byte, fds ...int) error {
	if c.fd < 0 {
		return errClosed
	}
	err := sendFlags(c.fd, buf, fds, unix.MSG_DONTWAIT)
	if err != errSendAgain {
		return err
	}
	if perr := c.park(true, c.sendTimeout, func(fd int) bool {
		err = sendFlags(fd, buf, fds, unix.MSG_DONTWAIT)
		return err != errSendAgain
	}); perr != nil {
		return perr
	}
	return err
}

// park calls try until it reports done, waiting on the runtime's poller
// for the socket to be readable (or, with write, writable) in between, for
// up to d (no limit if d <= 0). The poller watches a duplicate of the
// socket made for this wait and closed at its end, so that it watches no
// socket of a connection that is not waiting.
func (c *Conn) park(write bool, d time.Duration, try func(fd int) bool) error {
	dup, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	// The runtime polls a file only if it is nonblocking when os.NewFile
	// sees it. The flag belongs to the socket, which the hold needs
	// blocking: it is cleared again at once, as every call on the poller
	// passes MSG_DONTWAIT.
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	f := os.NewFile(uintptr(dup), "fdpass-park") // owns dup from here
	defer f.Close()
	if err := unix.SetNonblock(dup, false); err != nil {
		return os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	var deadline time.Time
	if d > 0 {
		deadline = time.Now().Add(d)
	}
	if write {
		err = f.SetWriteDeadline(deadline)
	} else {
		err = f.SetReadDeadline(deadline)
	}
	// Deadlines work only on a file the runtime polls: this fails if
	// registering the duplicate with the poller did.
	if err != nil {
		return fmt.Errorf("put socket on the runtime poller: %w", err)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	call := func(fd uintptr) bool { return try(int(fd)) }
	if write {
		return raw.Write(call)
	}
	return raw.Read(call)
}

// Shutdown shuts down the socket's receiving or sending side (shutdown(2)
// with how). A Recv waiting, held or parked, wakes: it reads what was
// queued before, then end-of-file. After Close it does nothing.
func (c *Conn) Shutdown(how int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil
	}
	if err := unix.Shutdown(c.fd, how); err != nil {
		return os.NewSyscallError("shutdown", err)
	}
	return nil
}

// Close closes the socket; later calls fail (Shutdown does nothing).
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return errClosed
	}
	err := unix.Close(c.fd)
	c.fd = -1
	if err != nil {
		return os.NewSyscallError("close", err)
	}
	return nil
}
