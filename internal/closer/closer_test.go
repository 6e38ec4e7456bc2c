package closer

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

// The blocking close used here is a file on a FUSE mount whose server is
// stopped: close(2) sends FUSE_FLUSH and waits, uninterruptibly, until the
// server answers (measured on Linux 6.18: as long as the server stays
// stopped; a TCP socket with SO_LINGER {on, 30 s} whose peer does not read
// waits at most 30 s, and any signal to the thread, such as the Go
// runtime's SIGURG, ends that wait at once, so it cannot hold a close
// reliably).

// stuckFDs opens n fds on a FUSE file and stops the server, so that every
// close(2) of them waits until resume is called (the mount's cleanup
// resumes too).
func stuckFDs(t *testing.T, n int) (fds []int, resume func()) {
	t.Helper()
	f := testutil.MountFUSE(t)
	f.Create(t, "f", "x")
	for range n {
		fds = append(fds, f.OpenFD(t, "f"))
	}
	f.Stop(t)
	return fds, func() { f.Resume(t) }
}

// pipes returns n pipes' write ends, for the Closer, and read ends, which
// read end-of-file once their write end is closed; the read ends are closed
// when the test ends.
func pipes(t *testing.T, n int) (w, r []int) {
	t.Helper()
	for range n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		r, w = append(r, p[0]), append(w, p[1])
	}
	t.Cleanup(func() {
		for _, fd := range r {
			unix.Close(fd)
		}
	})
	return w, r
}

// closedCount counts the read ends whose write end is closed.
func closedCount(r []int) int {
	var b [1]byte
	n := 0
	for _, fd := range r {
		if m, err := unix.Read(fd, b[:]); m == 0 && err == nil {
			n++
		}
	}
	return n
}

// inClose returns, for every fd some thread of this process is blocked in
// close(2) on, how many threads are (from /proc/self/task/*/syscall).
func inClose(t *testing.T) map[int]int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, e := range ents {
		b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/syscall")
		if err != nil {
			continue // thread gone
		}
		f := strings.Fields(string(b))
		if len(f) < 2 || f[0] != strconv.Itoa(unix.SYS_CLOSE) {
			continue
		}
		fd, err := strconv.ParseInt(strings.TrimPrefix(f[1], "0x"), 16, 64)
		if err == nil {
			out[int(fd)]++
		}
	}
	return out
}

// eventually fails the test unless cond holds within d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
	}
}

// close calls c.Close and fails the test if the call itself took long:
// Close must never wait for close(2).
func closeFast(t *testing.T, c *Closer, key uint32, fd int) {
	t.Helper()
	start := time.Now()
	c.Close(key, fd)
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("Close(%d, %d) took %v: it waited", key, fd, d)
	}
}

// noGoroutinesLeft waits until the goroutine count is back to before.
func noGoroutinesLeft(t *testing.T, before int) {
	t.Helper()
	eventually(t, 5*time.Second, "workers still running (goroutine leak)", func() bool { return runtime.NumGoroutine() <= before })
}

func (c *Closer) counts() (workers, busy int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.workers, c.busy
}

// A key whose closes block delays no other key: its fds wait behind one
// thread in close(2), another key's fds are all closed at once.
func TestStuckKeyDelaysNoOther(t *testing.T) {
	const a, b = 1000, 2000
	stuck, resume := stuckFDs(t, 3)
	w, r := pipes(t, 100)
	before := runtime.NumGoroutine()
	c := New(16, nil)
	for _, fd := range stuck {
		closeFast(t, c, a, fd)
	}
	eventually(t, 5*time.Second, "no thread in close(2) of key A's first fd", func() bool { return inClose(t)[stuck[0]] == 1 })
	start := time.Now()
	for _, fd := range w {
		closeFast(t, c, b, fd)
	}
	eventually(t, 2*time.Second, "key B's fds not closed while key A's close is stuck", func() bool { return c.Pending(b) == 0 })
	t.Logf("100 closes of key B took %v behind a stuck close of key A", time.Since(start))
	if n := closedCount(r); n != len(r) {
		t.Fatalf("%d of %d write ends closed, though Pending(B) is 0", n, len(r))
	}
	// Still exactly one thread on key A; its other fds wait.
	time.Sleep(50 * time.Millisecond)
	in := inClose(t)
	if in[stuck[0]] != 1 || in[stuck[1]] != 0 || in[stuck[2]] != 0 || c.Pending(a) != 3 {
		t.Fatalf("threads in close(2) %v (key A's fds %v), Pending(A) = %d: want one thread, on the first, and 3 pending", in, stuck, c.Pending(a))
	}
	resume()
	eventually(t, 5*time.Second, "key A's fds not closed after the server resumed", func() bool { return c.Pending(a) == 0 })
	if stuck, err := c.Stop(context.Background()); stuck != nil || err != nil {
		t.Fatalf("Stop = %v, %v", stuck, err)
	}
	noGoroutinesLeft(t, before)
}

// At most the limit's worth of threads are in close(2), each on another
// key; the other keys wait, counted by Pending.
func TestGlobalLimit(t *testing.T) {
	const limit, keys, perKey = 3, 5, 2
	stuck, resume := stuckFDs(t, keys*perKey)
	keyOf := map[int]uint32{}
	before := runtime.NumGoroutine()
	c := New(limit, nil)
	for i, fd := range stuck {
		k := uint32(i % keys)
		keyOf[fd] = k
		closeFast(t, c, k, fd)
	}
	eventually(t, 5*time.Second, "fewer threads in close(2) than the limit", func() bool { return len(inClose(t)) >= limit })
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		in := inClose(t)
		perKeyIn := map[uint32]int{}
		total := 0
		for fd, n := range in {
			perKeyIn[keyOf[fd]] += n
			total += n
		}
		for k, n := range perKeyIn {
			if n > 1 {
				t.Fatalf("%d threads in close(2) for key %d: %v", n, k, in)
			}
		}
		if total > limit {
			t.Fatalf("%d threads in close(2), limit %d: %v", total, limit, in)
		}
		if w, _ := c.counts(); w > limit {
			t.Fatalf("%d workers, limit %d", w, limit)
		}
	}
	sum := 0
	for k := range uint32(keys) {
		sum += c.Pending(k)
	}
	if sum != keys*perKey {
		t.Fatalf("Pending over all keys = %d, want %d", sum, keys*perKey)
	}
	if n := runtime.NumGoroutine() - before; n > limit {
		t.Fatalf("%d goroutines more than before, limit %d", n, limit)
	}
	resume()
	if stuck, err := c.Stop(context.Background()); stuck != nil || err != nil {
		t.Fatalf("Stop = %v, %v", stuck, err)
	}
	noGoroutinesLeft(t, before)
}

// Stop returns when its context ends, saying what is still pending; the
// Closer keeps working afterwards.
func TestStopReportsStuck(t *testing.T) {
	const a, b = 7, 8
	stuck, resume := stuckFDs(t, 2)
	w, r := pipes(t, 2)
	before := runtime.NumGoroutine()
	c := New(2, nil)
	for _, fd := range stuck {
		closeFast(t, c, a, fd)
	}
	closeFast(t, c, b, w[0])
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	left, err := c.Stop(ctx)
	d := time.Since(start)
	if d < 300*time.Millisecond || d > 2*time.Second {
		t.Errorf("Stop returned after %v, want when its 300ms context ended", d)
	}
	if !errors.Is(err, context.DeadlineExceeded) || len(left) != 1 || left[a] != 2 {
		t.Fatalf("Stop = %v, %v; want key %d with 2 fds and a deadline error", left, err, a)
	}
	t.Logf("Stop: %v", err)
	closeFast(t, c, b, w[1])
	eventually(t, 2*time.Second, "Close after Stop did not close", func() bool { return closedCount(r) == 2 })
	resume()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if left, err := c.Stop(ctx2); left != nil || err != nil {
		t.Fatalf("Stop after resume = %v, %v", left, err)
	}
	noGoroutinesLeft(t, before)
}

// A burst of fds starts no more workers than the limit, all are closed,
// and the workers exit once idle.
func TestBurst(t *testing.T) {
	const limit = 4
	w, r := pipes(t, 500)
	before := runtime.NumGoroutine()
	c := New(limit, nil)
	for i, fd := range w {
		c.Close(uint32(i%50), fd)
		if w, _ := c.counts(); w > limit {
			t.Fatalf("%d workers, limit %d", w, limit)
		}
	}
	if n := runtime.NumGoroutine() - before; n > limit {
		t.Fatalf("%d goroutines for 500 fds, limit %d", n, limit)
	}
	if left, err := c.Stop(context.Background()); left != nil || err != nil {
		t.Fatalf("Stop = %v, %v", left, err)
	}
	if n := closedCount(r); n != len(r) {
		t.Fatalf("%d of %d closed after Stop", n, len(r))
	}
	noGoroutinesLeft(t, before)
}

// A failing close(2) reaches the error function; the fd counts as closed.
func TestCloseError(t *testing.T) {
	errs := make(chan error, 1)
	c := New(1, func(key uint32, fd int, err error) {
		if key == 5 && fd == 1<<30 {
			errs <- err
		}
	})
	c.Close(5, 1<<30) // no such fd
	if err := <-errs; !errors.Is(err, unix.EBADF) {
		t.Fatalf("error %v, want EBADF", err)
	}
	if left, err := c.Stop(context.Background()); left != nil || err != nil || c.Pending(5) != 0 {
		t.Fatalf("Stop = %v, %v; Pending %d", left, err, c.Pending(5))
	}
}
