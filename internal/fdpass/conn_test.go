package fdpass

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

// newConn makes a Conn of one end of a SOCK_SEQPACKET pair and returns it
// with the other end, both closed when the test ends.
func newConn(t *testing.T, holds *Holds) (*Conn, int) {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConn(sp[1], holds)
	if err != nil {
		unix.Close(sp[0])
		t.Fatal(err)
	}
	// The peer first: that ends a Recv still waiting, which Close waits for.
	t.Cleanup(func() { unix.Close(sp[0]); c.Close() })
	return c, sp[0]
}

// result is one Recv's outcome, from another goroutine.
type result struct {
	msg string
	fds []int
	err error
}

// wait returns the result of a Recv begun with recvAsync, failing the test
// if it has not returned within 10 s (it did not wake).
func wait(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Recv still waiting after 10 s")
		return result{}
	}
}

func recvAsync(c *Conn) <-chan result {
	ch := make(chan result, 1)
	go func() {
		buf := make([]byte, 64)
		n, fds, err := c.Recv(buf, make([]byte, OOBSize(4)), nil, 1)
		ch <- result{string(buf[:n]), fds, err}
	}()
	return ch
}

// TestConnRoundTrip passes an fd each way, with the Recv held and parked.
func TestConnRoundTrip(t *testing.T) {
	for name, holds := range map[string]*Holds{"held": NewHolds(1), "parked": nil} {
		t.Run(name, func(t *testing.T) {
			c, peer := newConn(t, holds)
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			got := recvAsync(c)
			time.Sleep(20 * time.Millisecond) // past the hold, usually: both paths run
			if err := Send(peer, []byte("req"), int(r.Fd())); err != nil {
				t.Fatal(err)
			}
			res := wait(t, got)
			if res.err != nil || res.msg != "req" || len(res.fds) != 1 {
				t.Fatalf("Recv = %q %v %v", res.msg, res.fds, res.err)
			}
			defer unix.Close(res.fds[0])
			// The park cleared O_NONBLOCK again, for the next hold.
			if fl, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
				t.Fatalf("socket flags after Recv: %#x %v, want blocking", fl, err)
			}
			if err := c.Send([]byte("reply"), res.fds[0]); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 16)
			n, fds, err := Recv(peer, buf, make([]byte, OOBSize(4)), nil, 1)
			if err != nil || string(buf[:n]) != "reply" || len(fds) != 1 {
				t.Fatalf("reply: %q %v %v", buf[:n], fds, err)
			}
			unix.Close(fds[0])
		})
	}
}

// TestConnParkDuplicate: a parked Recv waits on a duplicate of the socket,
// closed when the Recv returns.
func TestConnParkDuplicate(t *testing.T) {
	c, peer := newConn(t, nil)
	before := len(testutil.FDs())
	got := recvAsync(c)
	var during int
	for deadline := time.Now().Add(10 * time.Second); during <= before && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		during = len(testutil.FDs())
	}
	if during != before+1 {
		t.Fatalf("fds: %d before the park, %d during it, want one more", before, during)
	}
	Send(peer, []byte("x"))
	if res := wait(t, got); res.err != nil || res.msg != "x" {
		t.Fatalf("Recv = %q %v", res.msg, res.err)
	}
	if after := len(testutil.FDs()); after != before {
		t.Fatalf("fds: %d before the park, %d after it", before, after)
	}
}

// TestConnHoldsBound lets no more Recvs hold a thread than the Holds
// allows, and gives every slot back.
func TestConnHoldsBound(t *testing.T) {
	h := NewHolds(1)
	if !h.take() {
		t.Fatal("an empty Holds of 1 refused")
	}
	if h.take() {
		t.Fatal("a full Holds of 1 gave a second slot")
	}
	h.put()
	c, peer := newConn(t, h)
	Send(peer, []byte("x"))
	buf := make([]byte, 4)
	if _, _, err := c.Recv(buf, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	if n := h.held.Load(); n != 0 {
		t.Fatalf("%d slots still taken after Recv", n)
	}
}

func TestConnRecvTimeout(t *testing.T) {
	c, _ := newConn(t, NewHolds(1))
	c.SetRecvTimeout(50 * time.Millisecond)
	if _, _, err := c.Recv(make([]byte, 4), nil, nil, 0); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Recv with nothing sent: %v, want a deadline error", err)
	}
}

// TestConnShutdownWakesRecv: a Recv waiting, held in recvmsg or parked on
// the poller, wakes at Shutdown, reads what was queued before and then
// end-of-file.
func TestConnShutdownWakesRecv(t *testing.T) {
	for name, holds := range map[string]*Holds{"held": NewHolds(1), "parked": nil} {
		t.Run(name, func(t *testing.T) {
			c, _ := newConn(t, holds)
			if holds != nil {
				// Hold for as long as the test could take, so that the
				// Shutdown below comes while the Recv is in recvmsg.
				tv := unix.NsecToTimeval(time.Hour.Nanoseconds())
				if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
					t.Fatal(err)
				}
			}
			got := recvAsync(c)
			time.Sleep(20 * time.Millisecond) // let it wait (it gets the same answer if not)
			if err := c.Shutdown(unix.SHUT_RD); err != nil {
				t.Fatal(err)
			}
			if res := wait(t, got); res.err != nil || res.msg != "" || len(res.fds) != 0 {
				t.Fatalf("Recv after Shutdown = %q %v %v, want end-of-file", res.msg, res.fds, res.err)
			}
		})
	}
	c, peer := newConn(t, NewHolds(1))
	Send(peer, []byte("queued"))
	c.Shutdown(unix.SHUT_RD)
	if res := wait(t, recvAsync(c)); res.err != nil || res.msg != "queued" {
		t.Fatalf("first Recv after Shutdown = %q %v, want the queued message", res.msg, res.err)
	}
	if res := wait(t, recvAsync(c)); res.err != nil || res.msg != "" {
		t.Fatalf("second Recv after Shutdown = %q %v, want end-of-file", res.msg, res.err)
	}
}

// TestConnSendWaitsForRoom: with the peer not reading, Send waits for room
// until its timeout; once the peer reads, a waiting Send goes through.
func TestConnSendWaitsForRoom(t *testing.T) {
	c, peer := newConn(t, nil)
	c.SetSendTimeout(50 * time.Millisecond)
	var sent int
	var err error
	for ; sent < 100000 && err == nil; sent++ {
		err = c.Send([]byte("fill"))
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Send to a peer that does not read, after %d messages: %v, want a deadline error", sent, err)
	}
	c.SetSendTimeout(time.Hour)
	done := make(chan error, 1)
	go func() { done <- c.Send([]byte("last")) }()
	buf := make([]byte, 8)
	for {
		n, _, err := Recv(peer, buf, nil, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) == "last" {
			break
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Send once the peer read: %v", err)
	}
}

// TestConnClosed: every call after Close fails but Shutdown, and the
// socket is closed once.
func TestConnClosed(t *testing.T) {
	c, peer := newConn(t, NewHolds(1))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(unix.SHUT_RD); err != nil {
		t.Fatalf("Shutdown after Close: %v", err)
	}
	if _, _, err := c.Recv(make([]byte, 4), nil, nil, 0); err == nil {
		t.Fatal("Recv after Close succeeded")
	}
	if err := c.Send([]byte("x")); err == nil {
		t.Fatal("Send after Close succeeded")
	}
	if err := c.Close(); err == nil {
		t.Fatal("second Close succeeded")
	}
	// The peer sees the close.
	if n, _, err := Recv(peer, make([]byte, 4), nil, nil, 0); n != 0 || err != nil {
		t.Fatalf("peer after Close: %d %v, want end-of-file", n, err)
	}
}
