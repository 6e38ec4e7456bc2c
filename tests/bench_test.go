package tests

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
	"github.com/capd-dev/capd/internal/testutil"
)

// The acquire benchmarks compare one capd acquire round trip through the
// client library with the floor: a raw SCM_RIGHTS round trip on the same
// socket type (AF_UNIX SOCK_SEQPACKET through a listening socket), carrying
// the same kind of fd (a memfd), a request of the same size, served by a
// plain blocking recvmsg/sendmsg loop. Both servers run in this process.

// rawServer answers every message on every connection with fd.
func rawServer(b *testing.B, fd int) string {
	dir, _ := os.MkdirTemp("", "capd-bench")
	path := filepath.Join(dir, "raw")
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		b.Fatal(err)
	}
	unix.Listen(l, 16)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, proto.MaxRequest)
				oob := make([]byte, fdpass.OOBSize(8))
				m := proto.NewMessage(nil, proto.OpAcquire, proto.CodeOK)
				reply := m.Bytes()
				var fds [8]int
				for {
					n, _, err := fdpass.Recv(c, buf, oob, fds[:0], 1)
					if err != nil || n == 0 {
						return
					}
					if err := fdpass.Send(c, reply, fd); err != nil {
						return
					}
				}
			}()
		}
	}()
	b.Cleanup(func() {
		unix.Shutdown(l, unix.SHUT_RDWR)
		mu.Lock()
		for _, c := range conns {
			unix.Shutdown(c, unix.SHUT_RDWR)
		}
		mu.Unlock()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			unix.Close(c)
		}
		mu.Unlock()
		unix.Close(l)
		os.RemoveAll(dir)
	})
	return path
}

func rawDial(b *testing.B, path string) int {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		b.Fatal(err)
	}
	return fd
}

// rawLoop does n raw round trips on connection fd.
func rawLoop(b *testing.B, fd, n int, req []byte) {
	in := make([]byte, 512)
	oob := make([]byte, fdpass.OOBSize(4))
	var fds [4]int
	for i := 0; i < n; i++ {
		if err := fdpass.Send(fd, req); err != nil {
			b.Error(err)
			return
		}
		_, got, err := fdpass.Recv(fd, in, oob, fds[:0], 1)
		if err != nil || len(got) != 1 {
			b.Errorf("raw reply: %v %v", got, err)
			return
		}
		unix.Close(got[0])
	}
}

type benchAgent struct {
	socket string
	owner  string
}

// startBenchAgent runs an agent in this process with one published memfd.
func startBenchAgent(b *testing.B) *benchAgent {
	testutil.RequireRoot(b)
	srv, err := agent.New(policy.Default(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	dir, _ := os.MkdirTemp("", "capd-bench")
	path := filepath.Join(dir, "s")
	l, err := agent.Listen(path)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		l.Close()
		srv.Close()
		os.RemoveAll(dir)
	})
	c, err := client.Dial(path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	me, err := c.Whoami()
	if err != nil {
		b.Fatal(err)
	}
	tok, err := client.NewToken("bench")
	if err != nil {
		b.Fatal(err)
	}
	defer tok.Close()
	if err := tok.Publish(c, nil); err != nil {
		b.Fatal(err)
	}
	return &benchAgent{socket: path, owner: me.Name}
}

func acquireLoop(b *testing.B, a *benchAgent, n int) {
	c, err := client.Dial(a.socket)
	if err != nil {
		b.Error(err)
		return
	}
	defer c.Close()
	for i := 0; i < n; i++ {
		fd, err := c.AcquireFD(a.owner, "bench")
		if err != nil {
			b.Error(err)
			return
		}
		unix.Close(fd)
	}
}

func benchFD(b *testing.B) int {
	fd, err := linux.MemfdCreate("bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	return fd
}

// acquireRequest is the bytes the client sends for the benchmark's acquire,
// so that the raw baseline moves exactly as much data.
func acquireRequest(owner string) []byte {
	m := proto.NewMessage(nil, proto.OpAcquire, proto.CodeOK)
	m.String(proto.AttrOwner, owner)
	m.String(proto.AttrName, "bench")
	return m.Bytes()
}

func BenchmarkRawRoundTrip(b *testing.B) {
	path := rawServer(b, benchFD(b))
	fd := rawDial(b, path)
	defer unix.Close(fd)
	req := acquireRequest(selfIdentityB(b))
	b.ResetTimer()
	rawLoop(b, fd, b.N, req)
}

func BenchmarkAcquire(b *testing.B) {
	a := startBenchAgent(b)
	b.ResetTimer()
	acquireLoop(b, a, b.N)
}

// parallel2 splits b.N round trips over two concurrent clients.
func parallel2(b *testing.B, loop func(n int)) {
	var wg sync.WaitGroup
	b.ResetTimer()
	for i := 0; i < 2; i++ {
		n := b.N / 2
		if i == 0 {
			n += b.N % 2
		}
		wg.Add(1)
		go func() { defer wg.Done(); loop(n) }()
	}
	wg.Wait()
}

func BenchmarkRawRoundTripParallel2(b *testing.B) {
	path := rawServer(b, benchFD(b))
	req := acquireRequest(selfIdentityB(b))
	fds := []int{rawDial(b, path), rawDial(b, path)}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	var next int
	var mu sync.Mutex
	parallel2(b, func(n int) {
		mu.Lock()
		fd := fds[next]
		next++
		mu.Unlock()
		rawLoop(b, fd, n, req)
	})
}

func BenchmarkAcquireParallel2(b *testing.B) {
	a := startBenchAgent(b)
	parallel2(b, func(n int) { acquireLoop(b, a, n) })
}

func selfIdentityB(b *testing.B) string {
	p, err := cgroupProcPath()
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkAcquireVsRaw alternates chunks of raw round trips, AcquireFD and
// Acquire on persistent connections within one benchmark, so that all three
// see the same machine state, and reports each one's ns per round trip and
// their ratios to raw. AcquireFD is the protocol round trip through the
// client; Acquire adds os.NewFile (one fcntl F_GETFL and a finalizer).
func BenchmarkAcquireVsRaw(b *testing.B) {
	a := startBenchAgent(b)
	path := rawServer(b, benchFD(b))
	rfd := rawDial(b, path)
	defer unix.Close(rfd)
	req := acquireRequest(a.owner)
	c, err := client.Dial(a.socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const chunk = 100
	var raw, acqFD, acq time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		t0 := time.Now()
		rawLoop(b, rfd, n, req)
		t1 := time.Now()
		for i := 0; i < n; i++ {
			fd, err := c.AcquireFD(a.owner, "bench")
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
		t2 := time.Now()
		for i := 0; i < n; i++ {
			f, err := c.Acquire(a.owner, "bench")
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		t3 := time.Now()
		raw += t1.Sub(t0)
		acqFD += t2.Sub(t1)
		acq += t3.Sub(t2)
	}
	b.ReportMetric(float64(raw.Nanoseconds())/float64(b.N), "raw-ns/op")
	b.ReportMetric(float64(acqFD.Nanoseconds())/float64(b.N), "acquirefd-ns/op")
	b.ReportMetric(float64(acq.Nanoseconds())/float64(b.N), "acquire-ns/op")
	b.ReportMetric(float64(acqFD)/float64(raw), "acquirefd/raw")
	b.ReportMetric(float64(acq)/float64(raw), "acquire/raw")
}
