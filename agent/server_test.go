package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

type testServer struct {
	*Server
	path string
}

func startServer(t *testing.T, cfg *policy.Config) *testServer {
	t.Helper()
	testutil.RequireRoot(t)
	dir, err := os.MkdirTemp("", "capd")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s")
	s, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
		l.Close()
		s.Close()
		os.RemoveAll(dir)
	})
	return &testServer{Server: s, path: path}
}

// raw is a client socket that speaks bytes, for bad input.
type raw struct {
	t  *testing.T
	fd int
}

func (s *testServer) dial(t *testing.T) *raw {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: s.path}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	r := &raw{t: t, fd: fd}
	t.Cleanup(func() { r.close() })
	return r
}

func (r *raw) close() {
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

func (r *raw) send(b []byte, fds ...int) {
	r.t.Helper()
	if err := fdpass.Send(r.fd, b, fds...); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

// reply reads one reply; eof reports a closed connection instead.
func (r *raw) reply() (h proto.Header, msg string, fd int, eof bool) {
	r.t.Helper()
	buf := make([]byte, proto.MaxResponse)
	oob := make([]byte, fdpass.OOBSize(4))
	n, fds, err := fdpass.Recv(r.fd, buf, oob, nil, 1)
	if errors.Is(err, unix.ECONNRESET) || (err == nil && n == 0 && len(fds) == 0) {
		return h, "", -1, true
	}
	if err != nil {
		r.t.Fatalf("recv: %v", err)
	}
	h, attrs, err := proto.ParseHeader(buf[:n])
	if err != nil {
		r.t.Fatalf("reply header: %v", err)
	}
	fd = -1
	if len(fds) == 1 {
		fd = fds[0]
	}
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		if t == proto.AttrMessage {
			msg = string(v)
		}
	}
	return h, msg, fd, false
}

func (r *raw) expectError(code proto.Code, words string, thenClosed bool) {
	r.t.Helper()
	h, msg, fd, eof := r.reply()
	if eof {
		r.t.Fatalf("connection closed, want %s", code)
	}
	if fd >= 0 {
		unix.Close(fd)
		r.t.Fatalf("error reply carried an fd")
	}
	if h.Code != code || !strings.Contains(msg, words) {
		r.t.Fatalf("reply %s %q, want %s containing %q", h.Code, msg, code, words)
	}
	if thenClosed {
		if _, _, _, eof := r.reply(); !eof {
			r.t.Fatal("connection stays open after a fatal error")
		}
	}
}

func msg(op proto.Op, build func(m *proto.Builder)) []byte {
	m := proto.NewMessage(nil, op, proto.CodeOK)
	if build != nil {
		build(&m)
	}
	return m.Bytes()
}

func memfd(t *testing.T) int {
	t.Helper()
	fd, err := linux.MemfdCreate("test")
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// identity asks the agent who this test process is.
func (s *testServer) identity(t *testing.T) string {
	t.Helper()
	buf := make([]byte, proto.MaxResponse)
	r := s.dial(t)
	defer r.close()
	r.send(msg(proto.OpWhoami, nil))
	n, _, err := fdpass.Recv(r.fd, buf, nil, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, attrs, _ := proto.ParseHeader(buf[:n])
	it := proto.Attrs(attrs)
	for typ, v, ok := it.Next(); ok; typ, v, ok = it.Next() {
		if typ == proto.AttrIdentity {
			return string(v)
		}
	}
	t.Fatal("whoami without identity")
	return ""
}

// serving checks that the agent still answers a fresh client.
func (s *testServer) serving(t *testing.T) {
	t.Helper()
	// Connections of a flood just closed may still count against the
	// per-uid limit for a moment: busy is an answer, retry it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r := s.dial(t)
		fdpass.Send(r.fd, msg(proto.OpWhoami, nil))
		h, m, _, eof := r.reply()
		r.close()
		switch {
		case !eof && h.Code == proto.CodeOK:
			return
		case !eof && h.Code == proto.CodeBusy && time.Now().Before(deadline):
			continue
		case eof && time.Now().Before(deadline):
			continue // a refusal that raced the flood's last closes: ask again
		}
		t.Fatalf("agent stopped serving: %v %s", h.Code, m)
	}
}

func TestBadInput(t *testing.T) {
	s := startServer(t, policy.Default())
	before := len(testutil.FDs())
	check := func(name string, f func(t *testing.T, r *raw)) {
		t.Run(name, func(t *testing.T) {
			r := s.dial(t)
			r.t = t
			f(t, r)
			r.close()
			s.serving(t)
		})
	}
	check("short header", func(t *testing.T, r *raw) {
		r.send([]byte{1, 2, 3})
		r.expectError(proto.CodeInvalidRequest, "shorter than the header", true)
	})
	check("unknown version", func(t *testing.T, r *raw) {
		b := msg(proto.OpWhoami, nil)
		b[0] = 9
		r.send(b)
		r.expectError(proto.CodeUnsupportedVersion, "version 9", true)
	})
	check("reserved bytes", func(t *testing.T, r *raw) {
		b := msg(proto.OpWhoami, nil)
		b[5] = 1
		r.send(b)
		r.expectError(proto.CodeInvalidRequest, "reserved", true)
	})
	check("code in request", func(t *testing.T, r *raw) {
		b := msg(proto.OpWhoami, nil)
		b[2] = 4
		r.send(b)
		r.expectError(proto.CodeInvalidRequest, "code field", true)
	})
	check("unknown op", func(t *testing.T, r *raw) {
		r.send(msg(99, nil))
		r.expectError(proto.CodeInvalidRequest, "unknown operation", true)
	})
	check("oversize", func(t *testing.T, r *raw) {
		b := msg(proto.OpAcquire, func(m *proto.Builder) { m.String(proto.AttrOwner, strings.Repeat("x", 5000)) })
		r.send(b)
		r.expectError(proto.CodeInvalidRequest, "larger than 4096", true)
	})
	check("empty message", func(t *testing.T, r *raw) {
		r.send(nil)
		if _, _, _, eof := r.reply(); !eof {
			t.Fatal("empty message did not close the connection")
		}
	})
	check("attribute overruns message", func(t *testing.T, r *raw) {
		b := msg(proto.OpAcquire, func(m *proto.Builder) { m.String(proto.AttrOwner, "a.service") })
		binary.LittleEndian.PutUint16(b[proto.HeaderSize+2:], 200)
		r.send(b)
		r.expectError(proto.CodeInvalidRequest, "claims 200 bytes", true)
	})
	check("trailing bytes", func(t *testing.T, r *raw) {
		r.send(append(msg(proto.OpWhoami, nil), 1, 2))
		// Whoami ignores attributes; acquire does not.
		r.reply()
		r.send(append(msg(proto.OpAcquire, nil), 1, 2))
		r.expectError(proto.CodeInvalidRequest, "trailing", true)
	})
	check("repeated attribute", func(t *testing.T, r *raw) {
		r.send(msg(proto.OpAcquire, func(m *proto.Builder) {
			m.String(proto.AttrOwner, "a.service")
			m.String(proto.AttrOwner, "b.service")
			m.String(proto.AttrName, "x")
		}))
		r.expectError(proto.CodeInvalidRequest, "repeated", true)
	})
	check("unexpected fd", func(t *testing.T, r *raw) {
		fd := memfd(t)
		defer unix.Close(fd)
		r.send(msg(proto.OpAcquire, func(m *proto.Builder) {
			m.String(proto.AttrOwner, "a.service")
			m.String(proto.AttrName, "x")
		}), fd)
		r.expectError(proto.CodeInvalidRequest, "takes no fd", true)
	})
	check("publish without fd", func(t *testing.T, r *raw) {
		r.send(msg(proto.OpPublish, func(m *proto.Builder) { m.String(proto.AttrName, "x") }))
		r.expectError(proto.CodeInvalidRequest, "exactly one fd", true)
	})
	check("surplus fds", func(t *testing.T, r *raw) {
		a, b, c := memfd(t), memfd(t), memfd(t)
		defer unix.Close(a)
		defer unix.Close(b)
		defer unix.Close(c)
		r.send(msg(proto.OpPublish, func(m *proto.Builder) { m.String(proto.AttrName, "x") }), a, b, c)
		r.expectError(proto.CodeInvalidRequest, "at most one fd", true)
	})
	check("control data truncated", func(t *testing.T, r *raw) {
		var fds []int
		for i := 0; i < 12; i++ { // more than the agent's control buffer holds
			fds = append(fds, memfd(t))
		}
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		r.send(msg(proto.OpPublish, func(m *proto.Builder) { m.String(proto.AttrName, "x") }), fds...)
		r.expectError(proto.CodeInvalidRequest, "at most one fd", true)
	})
	check("bad publish fields", func(t *testing.T, r *raw) {
		for _, tc := range []struct {
			build func(m *proto.Builder)
			want  string
		}{
			{func(m *proto.Builder) {}, "needs a name"},
			{func(m *proto.Builder) { m.String(proto.AttrName, "a:b") }, "contains"},
			{func(m *proto.Builder) { m.String(proto.AttrName, "x"); m.U32(proto.AttrFlags, 1<<7) }, "unknown publish flags"},
			{func(m *proto.Builder) { m.String(proto.AttrName, "x"); m.U64(proto.AttrTTL, 0) }, "out of range"},
			{func(m *proto.Builder) { m.String(proto.AttrName, "x"); m.String(proto.AttrAllow, "[") }, "syntax error"},
			{func(m *proto.Builder) { m.String(proto.AttrName, "x"); m.String(proto.AttrFlags, "ab") }, "u32 attribute of 2 bytes"},
		} {
			rr := s.dial(t)
			fd := memfd(t)
			rr.send(msg(proto.OpPublish, tc.build), fd)
			unix.Close(fd)
			rr.expectError(proto.CodeInvalidRequest, tc.want, true)
			rr.close()
		}
		if n := s.Entries(); n != 0 {
			t.Fatalf("store holds %d entries after refused publishes", n)
		}
	})
	check("client vanishes before identification", func(t *testing.T, r *raw) {
		for i := 0; i < 50; i++ {
			rr := s.dial(t)
			rr.close()
		}
	})
	check("client vanishes before its reply", func(t *testing.T, r *raw) {
		fd := memfd(t)
		r.send(msg(proto.OpPublish, func(m *proto.Builder) { m.String(proto.AttrName, "vanish") }), fd)
		unix.Close(fd)
		if h, m, _, _ := r.reply(); h.Code != proto.CodeOK {
			t.Fatalf("publish: %s %s", h.Code, m)
		}
		r.send(msg(proto.OpWhoami, nil))
		_, _, _, _ = r.reply()
		me := s.identity(t)
		for i := 0; i < 200; i++ {
			rr := s.dial(t)
			// Past the per-uid limit the agent refuses some of these
			// connections; either way the client is gone before its reply.
			fdpass.Send(rr.fd, msg(proto.OpAcquire, func(m *proto.Builder) {
				m.String(proto.AttrOwner, me)
				m.String(proto.AttrName, "vanish")
			}))
			rr.close()
		}
		r.send(msg(proto.OpRevoke, func(m *proto.Builder) { m.String(proto.AttrName, "vanish") }))
		if h, m, _, _ := r.reply(); h.Code != proto.CodeOK {
			t.Fatalf("revoke: %s %s", h.Code, m)
		}
	})
	// Every connection above is gone; the agent holds no fd more than it
	// did before them (it shares this process's fd table).
	waitFor(t, func() bool { return len(testutil.FDs()) <= before })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met in 5s; fds now: %v", testutil.FDs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestIdleClientIsDisconnected(t *testing.T) {
	cfg := policy.Default()
	cfg.Agent.IdleTimeout = policy.Duration(200 * time.Millisecond)
	s := startServer(t, cfg)
	r := s.dial(t)
	start := time.Now()
	if _, _, _, eof := r.reply(); !eof {
		t.Fatal("idle client got a reply instead of a closed connection")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("idle client closed only after %v", d)
	}
	s.serving(t)
}

func TestConnectionLimitPerUID(t *testing.T) {
	cfg := policy.Default()
	cfg.Agent.MaxConnectionsPerUID = 3
	s := startServer(t, cfg)
	var conns []*raw
	for i := 0; i < 3; i++ {
		r := s.dial(t)
		r.send(msg(proto.OpWhoami, nil))
		if h, _, _, eof := r.reply(); eof || h.Code != proto.CodeOK {
			t.Fatalf("connection %d refused", i)
		}
		conns = append(conns, r)
	}
	// The refusal arrives unasked, right after accept.
	extra := s.dial(t)
	extra.expectError(proto.CodeBusy, "uid 0 has 3 connections", true)
	conns[0].close()
	waitFor(t, func() bool {
		r := s.dial(t)
		defer r.close()
		if fdpass.Send(r.fd, msg(proto.OpWhoami, nil)) != nil {
			return false
		}
		h, _, _, eof := r.reply()
		return !eof && h.Code == proto.CodeOK
	})
}

func TestStaleAndLiveSocket(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	// A socket file nobody listens on is stale: removed and rebound.
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	l, err := Listen(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l.Close()
	if _, err := Listen(path); !errors.Is(err, ErrAgentRunning) {
		t.Fatalf("second listener on a live socket: %v, want ErrAgentRunning", err)
	}
	// A regular file is never replaced.
	other := filepath.Join(dir, "file")
	os.WriteFile(other, nil, 0o644)
	if _, err := Listen(other); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listen over a regular file: %v", err)
	}
}

// TestIdentityFallback resolves identities as on kernels before 6.5
// (SO_PEERCRED, pidfd_open, /proc/PID/cgroup checked against the pidfd) and
// expects the same answer as the SO_PEERPIDFD + PIDFD_GET_INFO path.
func TestIdentityFallback(t *testing.T) {
	s := startServer(t, policy.Default())
	modern := s.identity(t)
	oldKernel.Store(true)
	defer oldKernel.Store(false)
	if old := s.identity(t); old != modern || old == "" {
		t.Fatalf("fallback identity %q, modern %q", old, modern)
	}
}

// threads is this process's thread count (/proc/self/status Threads).
func threads(t *testing.T) int {
	t.Helper()
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("/proc/self/status has no Threads")
	return 0
}

// TestIdleConnectionsHoldNoThread: a connection waiting for its next
// request holds no OS thread (it once held one each, in a blocking
// recvmsg): 200 idle connections add at most the maxHeld threads that
// connections served within the last tick may hold, and a few of the
// runtime's own.
func TestIdleConnectionsHoldNoThread(t *testing.T) {
	const n = 200
	cfg := policy.Default()
	cfg.Agent.MaxConnections = n + 16
	cfg.Agent.MaxConnectionsPerUID = n + 16
	s := startServer(t, cfg)
	s.serving(t)
	before := threads(t)
	for range n {
		r := s.dial(t)
		r.send(msg(proto.OpWhoami, nil))
		if h, _, _, eof := r.reply(); eof || h.Code != proto.CodeOK {
			t.Fatalf("whoami: %v (eof %v)", h.Code, eof)
		}
	}
	time.Sleep(50 * time.Millisecond) // past every hold
	if after := threads(t); after-before > maxHeld+8 {
		t.Fatalf("%d idle connections took the process from %d to %d threads", n, before, after)
	}
}

// TestDrainWakesWaitingConnections: Drain wakes every connection, whether
// it waits for its next request parked on the poller or held in recvmsg,
// or runs a request with another queued behind it; the queued one is
// answered busy without being acted on, and every connection closes.
func TestDrainWakesWaitingConnections(t *testing.T) {
	s := startServer(t, policy.Default())
	self := s.identity(t)
	whoami := func() *raw {
		r := s.dial(t)
		r.send(msg(proto.OpWhoami, nil))
		if h, _, _, eof := r.reply(); eof || h.Code != proto.CodeOK {
			t.Fatalf("whoami: %v (eof %v)", h.Code, eof)
		}
		return r
	}
	parked := whoami()
	// An acquire of one's own missing entry waits for it to be published;
	// the whoami behind it waits in the socket.
	busy := s.dial(t)
	busy.send(msg(proto.OpAcquire, func(m *proto.Builder) {
		m.String(proto.AttrOwner, self)
		m.String(proto.AttrName, "never")
		m.U64(proto.AttrWait, 60000)
	}))
	busy.send(msg(proto.OpWhoami, nil))
	time.Sleep(50 * time.Millisecond) // parked is past its hold, busy's acquire waits
	held := whoami()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	busy.expectError(proto.CodeBusy, "shutting down", false)
	busy.expectError(proto.CodeBusy, "not acted on", true)
	for name, r := range map[string]*raw{"parked": parked, "held": held} {
		if h, m, _, eof := r.reply(); !eof {
			t.Fatalf("%s connection got %v %q after Drain, want a close", name, h.Code, m)
		}
	}
}
