//go:build vmguest

package enforce

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// BenchmarkOverhead measures read(2) of 1 byte and a 1-byte send+recv on
// unrelated fds with the programs attached and without, alternating in
// rounds of the same run (run with -test.benchtime=1x; b.N is ignored).
// The guest is emulated: compare the ratios, not the times.
func BenchmarkOverhead(b *testing.B) {
	const rounds, ops = 25, 20000
	devnull, err := unix.Open("/dev/zero", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(devnull)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	buf := make([]byte, 1)
	read := func() time.Duration {
		t0 := time.Now()
		for i := 0; i < ops; i++ {
			if _, err := unix.Read(devnull, buf); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0) / ops
	}
	sendrecv := func() time.Duration {
		t0 := time.Now()
		for i := 0; i < ops; i++ {
			if err := unix.Sendmsg(sp[0], buf, nil, nil, 0); err != nil {
				b.Fatal(err)
			}
			if _, _, _, _, err := unix.Recvmsg(sp[1], buf, nil, 0); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0) / ops
	}
	// Load once; each round attaches the same programs (no verifier run)
	// and detaches them, with one revocation in the map.
	e, err := Load()
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	fd, _ := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	defer unix.Close(fd)
	if err := e.Revoke(fd, 1, 0, false); err != nil {
		b.Fatal(err)
	}
	progs := e.detachForBench(b)
	var rr, sr []float64
	var sum [4]time.Duration
	for r := 0; r < rounds; r++ {
		// Alternate which comes first, so that drift between the halves
		// of a round does not count for one side only.
		var r0, s0, r1, s1 time.Duration
		if r%2 == 0 {
			r0, s0 = read(), sendrecv()
		}
		links := attachForBench(b, progs)
		r1, s1 = read(), sendrecv()
		for _, l := range links {
			l.Close()
		}
		if r%2 == 1 {
			r0, s0 = read(), sendrecv()
		}
		rr = append(rr, float64(r1)/float64(r0))
		sr = append(sr, float64(s1)/float64(s0))
		sum[0] += r0
		sum[1] += r1
		sum[2] += s0
		sum[3] += s1
	}
	for _, p := range progs {
		p.Close()
	}
	fmt.Printf("%d rounds of %d ops, alternating: read 1B %v without, %v with, median x%.2f (min %.2f max %.2f); send+recv %v without, %v with, median x%.2f (min %.2f max %.2f)\n",
		rounds, ops, sum[0]/rounds, sum[1]/rounds, median(rr), slices.Min(rr), slices.Max(rr),
		sum[2]/rounds, sum[3]/rounds, median(sr), slices.Min(sr), slices.Max(sr))
	b.ReportMetric(median(rr), "x-read")
	b.ReportMetric(median(sr), "x-sendrecv")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// detachForBench closes e's links and returns their programs, for
// attachForBench to attach again.
func (e *Enforcer) detachForBench(b *testing.B) []*ebpf.Program {
	var ps []*ebpf.Program
	for name, l := range e.links {
		info, err := l.Info()
		if err != nil {
			b.Fatal(err)
		}
		p, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			b.Fatalf("program of %s: %v", name, err)
		}
		ps = append(ps, p)
		l.Close()
		delete(e.links, name)
	}
	return ps
}

func attachForBench(b *testing.B, ps []*ebpf.Program) []link.Link {
	var ls []link.Link
	for _, p := range ps {
		l, err := link.AttachLSM(link.LSMOptions{Program: p})
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// BenchmarkRevoke10k: Revoke with 10,000 keys in the map. The keys'
// files are kept alive in flight in a unix socket (SCM_RIGHTS not yet
// received), so the agent's fd table stays small; then again with 10,000
// fds open, since Revoke's iterator walks the agent's fd table. Run with
// -test.benchtime=1x: it times a fixed number of revokes itself.
func BenchmarkRevoke10k(b *testing.B) {
	const keys, batch, n = 10000, 250, 200
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	if lim.Cur < keys+1000 {
		lim.Cur, lim.Max = keys+1000, max(lim.Max, keys+1000)
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			b.Fatal(err)
		}
	}
	e, err := Load()
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(sp[1])
	defer unix.Close(sp[0]) // first: the in-flight files die with it
	unix.SetsockoptInt(sp[0], unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
	unix.SetsockoptInt(sp[1], unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	t0 := time.Now()
	fds := make([]int, batch)
	for k := 0; k < keys; k += batch {
		for i := range fds {
			if fds[i], err = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
				b.Fatal(err)
			}
			if err := e.Revoke(fds[i], uint64(k+i), 0, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := unix.Sendmsg(sp[0], []byte{0}, unix.UnixRights(fds...), nil, 0); err != nil {
			b.Fatal(err)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	fmt.Printf("setup: %d revokes in %v\n", keys, time.Since(t0))
	if l := e.Len(); l != keys {
		b.Fatalf("Len() = %d", l)
	}
	timeRevoke := func(fd int) time.Duration {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			if err := e.Revoke(fd, keys+1, 0, false); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0) / n
	}
	fd, _ := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if !e.Fast() {
		b.Fatal("file_ioctl does not take the agent's revoke request")
	}
	few := timeRevoke(fd)
	open := []int{}
	defer func() {
		for _, fd := range open {
			unix.Close(fd)
		}
	}()
	for i := 0; i < keys; i++ {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		open = append(open, fd)
	}
	many := timeRevoke(open[len(open)-1])
	// The same by the walk of the fd table that Revoke falls back to.
	e.fast = false
	fewWalk := timeRevoke(fd)
	manyWalk := timeRevoke(open[len(open)-1])
	e.fast = true
	unix.Close(fd)
	fmt.Printf("revoke with %d keys (file_ioctl): %v with few fds open, %v with %d fds open (the last)\n", keys, few, many, keys)
	fmt.Printf("revoke with %d keys (fd table walk): %v with few fds open, %v with %d fds open (the last)\n", keys, fewWalk, manyWalk, keys)
	b.ReportMetric(float64(few.Nanoseconds()), "ns/revoke-10k-keys")
	b.ReportMetric(float64(many.Nanoseconds()), "ns/revoke-10k-keys-10k-fds")
	b.ReportMetric(float64(fewWalk.Nanoseconds()), "ns/revoke-walk-10k-keys")
	b.ReportMetric(float64(manyWalk.Nanoseconds()), "ns/revoke-walk-10k-keys-10k-fds")
}
