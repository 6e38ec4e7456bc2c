package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/poller"
)

// DefaultTimeout is how long a client may take to send its request head,
// and again to read the answer.
const DefaultTimeout = 2 * time.Second

// Options say where an Endpoint listens and what it serves.
type Options struct {
	// Socket is a unix stream socket path, bound with mode 0600; "" for
	// none.
	Socket string
	// Listen is a TCP address; the zero AddrPort for none.
	Listen netip.AddrPort
	// Render appends the exposition to t. It runs on the endpoint's
	// goroutines, up to one per listener at a time.
	Render func(t *Text)
	// Timeout bounds a connection; 0 is DefaultTimeout.
	Timeout time.Duration
	// Log receives what goes wrong; nil is slog.Default().
	Log *slog.Logger
}

// Endpoint is the listening metrics endpoint.
type Endpoint struct {
	opts Options
	poll *poller.Poller
	ls   []*listener
	wg   sync.WaitGroup

	mu      sync.Mutex
	conns   map[int]struct{} // accepted connections being served
	stopped bool
	closed  bool
}

// listener is one listening socket.
type listener struct {
	fd   int
	addr string // what it listens on, for the log: a path or IP:PORT
	path string // the socket file Close removes; "" for TCP
	ino  uint64
}

// lingerTime and maxDiscard bound the wait for the client's close after
// the answer, and what is read and dropped meanwhile.
const (
	lingerTime = 200 * time.Millisecond
	maxDiscard = 64 << 10
)

// backlog is each listening socket's: connections wait there while the
// loop serves one.
const backlog = 16

// Open binds the listeners opts names; Start serves them. On error
// nothing is left open.
func Open(opts Options) (*Endpoint, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	e := &Endpoint{opts: opts, conns: map[int]struct{}{}}
	var err error
	if e.poll, err = poller.New(); err != nil {
		return nil, err
	}
	if opts.Socket != "" {
		l, err := listenUnix(opts.Socket)
		if err != nil {
			e.closeAll()
			return nil, err
		}
		e.ls = append(e.ls, l)
	}
	if opts.Listen.IsValid() {
		l, err := listenTCP(opts.Listen)
		if err != nil {
			e.closeAll()
			return nil, err
		}
		e.ls = append(e.ls, l)
	}
	return e, nil
}

// Addrs lists what the endpoint listens on: the socket path, then the
// TCP address with the port the kernel picked if it was 0.
func (e *Endpoint) Addrs() []string {
	out := make([]string, len(e.ls))
	for i, l := range e.ls {
		out[i] = l.addr
	}
	return out
}

// Start runs one accept loop per listener until Close.
func (e *Endpoint) Start() {
	for _, l := range e.ls {
		e.wg.Add(1)
		go e.serve(l)
	}
}

// Close stops the loops, shuts a connection in progress down, waits for
// the loops and releases every fd; the unix socket's file is removed if
// it is still the one Open bound. Later calls do nothing. Nil does nothing.
func (e *Endpoint) Close() {
	if e == nil {
		return
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed, e.stopped = true, true
	e.poll.Stop()
	for fd := range e.conns {
		linux.Shutdown(fd, unix.SHUT_RDWR)
	}
	e.mu.Unlock()
	e.wg.Wait()
	e.closeAll()
}

func (e *Endpoint) closeAll() {
	for _, l := range e.ls {
		if l.path != "" {
			var st unix.Stat_t
			if linux.Stat(l.path, &st) == nil && st.Ino == l.ino {
				os.Remove(l.path)
			}
		}
		linux.Close(l.fd)
	}
	e.ls = nil
	e.poll.Close()
}

// maxConcurrent bounds the connections one listener answers at once:
// enough that a few silent clients (each given Timeout to send its head)
// do not hold a scrape back, few enough to bound goroutines and buffers.
const maxConcurrent = 16

// serve is one listener's loop: accept, and answer each connection on one
// of at most maxConcurrent goroutines (the loop waits for a free one).
func (e *Endpoint) serve(l *listener) {
	defer e.wg.Done()
	slots := make(chan struct{}, maxConcurrent)
	for {
		if err := e.poll.Wait(l.fd); errors.Is(err, poller.ErrStopped) {
			return
		} else if err != nil {
			e.opts.Log.Error("metrics endpoint stopped", "listen", l.addr, "err", err)
			return
		}
		fd, err := linux.Accept4(l.fd)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ECONNABORTED), errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
				e.opts.Log.Warn("metrics: accept failed; backing off", "listen", l.addr, "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			e.opts.Log.Error("metrics endpoint stopped", "listen", l.addr, "err", err)
			return
		}
		e.mu.Lock()
		if e.stopped {
			e.mu.Unlock()
			linux.Close(fd)
			return
		}
		e.conns[fd] = struct{}{}
		e.mu.Unlock()
		slots <- struct{}{}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.answer(fd, make([]byte, MaxHead), nil, nil, l.path == "")
			e.mu.Lock()
			delete(e.conns, fd)
			linux.Close(fd)
			e.mu.Unlock()
			<-slots
		}()
	}
}

// answer reads one request head from fd within the timeout and sends the
// answer within another, then closes its sending side and, for at most
// lingerTime, discards what the client sent beyond the head, so that
// closing does not reset the connection before the client read the
// answer. body and out are buffers it reuses.
func (e *Endpoint) answer(fd int, in, body, out []byte, tcp bool) ([]byte, []byte) {
	deadline := time.Now().Add(e.opts.Timeout)
	n, end := 0, -1
	status := 0
	for {
		if end = headEnd(in[:n]); end >= 0 {
			break
		}
		if n == len(in) {
			status = statusHeadTooLarge
			break
		}
		left := time.Until(deadline)
		if left <= 0 || setTimeout(fd, unix.SO_RCVTIMEO, left) != nil {
			status = statusTimeout
			break
		}
		m, err := linux.Read(fd, in[n:])
		if errors.Is(err, unix.EAGAIN) {
			status = statusTimeout
			break
		}
		if err != nil {
			return body, out // reset or shut down: nobody to answer
		}
		if m == 0 {
			status = statusBadRequest // the client stopped in mid-head
			break
		}
		n += m
	}
	if n == 0 || (status != 0 && isBlank(in[:n])) {
		return body, out // nothing asked: a connection opened and left
	}
	omitBody := false
	if status == 0 {
		status, omitBody = parseHead(in[:end])
		if status == statusOK && tcp && !localHost(in[:end]) {
			// A page in a browser on this host, its name rebound to
			// 127.0.0.1 (DNS rebinding), sends its own name as Host.
			status = statusBadRequest
		}
	}
	body = body[:0]
	if status == statusOK {
		var t Text
		t.Reset(body)
		e.opts.Render(&t)
		body = t.Bytes()
	}
	out = appendResponse(out[:0], status, body, omitBody, time.Now())
	// The answer gets a timeout of its own: a 408 is due at the read's.
	deadline = time.Now().Add(e.opts.Timeout)
	for b := out; len(b) > 0; {
		left := time.Until(deadline)
		if left <= 0 || setTimeout(fd, unix.SO_SNDTIMEO, left) != nil {
			return body, out
		}
		m, err := linux.Send(fd, b)
		if err != nil {
			return body, out
		}
		b = b[m:]
	}
	linux.Shutdown(fd, unix.SHUT_WR)
	// Linger for the client's close, briefly and within the deadline:
	// unread data at close would reset the connection.
	lingerEnd := time.Now().Add(lingerTime)
	if deadline.Before(lingerEnd) {
		lingerEnd = deadline
	}
	for discarded := 0; discarded < maxDiscard; {
		left := time.Until(lingerEnd)
		if left <= 0 || setTimeout(fd, unix.SO_RCVTIMEO, left) != nil {
			break
		}
		m, err := linux.Read(fd, in)
		if err != nil || m == 0 {
			break
		}
		discarded += m
	}
	return body, out
}

// isBlank reports whether b holds nothing but line ends.
func isBlank(b []byte) bool {
	for _, c := range b {
		if c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

func setTimeout(fd, opt int, d time.Duration) error {
	tv := unix.NsecToTimeval(max(d, time.Millisecond).Nanoseconds())
	return linux.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv)
}

// listenUnix binds a unix stream socket at path with mode 0600. A live
// socket there is an error; a stale one (nothing listening) is replaced;
// anything else there is left alone and an error.
func listenUnix(path string) (*listener, error) {
	fd, ino, err := linux.ListenUnix(path, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, backlog)
	if err != nil {
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	return &listener{fd: fd, addr: path, path: path, ino: ino}, nil
}

// listenTCP binds a TCP socket at a.
func listenTCP(a netip.AddrPort) (*listener, error) {
	domain := unix.AF_INET6
	var sa unix.Sockaddr
	if a.Addr().Is4() {
		domain = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
	}
	fd, err := linux.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", a, err)
	}
	// A restarted agent binds again while the last one's connections are
	// in TIME_WAIT.
	if err := linux.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		linux.Close(fd)
		return nil, err
	}
	if err := linux.Bind(fd, sa); err != nil {
		linux.Close(fd)
		return nil, fmt.Errorf("metrics listen %s: %w", a, err)
	}
	if err := linux.Listen(fd, backlog); err != nil {
		linux.Close(fd)
		return nil, err
	}
	bound, err := linux.Getsockname(fd)
	if err != nil {
		linux.Close(fd)
		return nil, err
	}
	port := a.Port()
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		port = uint16(b.Port)
	case *unix.SockaddrInet6:
		port = uint16(b.Port)
	}
	return &listener{fd: fd, addr: netip.AddrPortFrom(a.Addr(), port).String()}, nil
}
