package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

// BenchmarkOneShot times one acquire that starts a program, the way a unit
// or a container entry point runs it, against s6-fdholder-retrieve, the
// equivalent of the fd holder closest to capd:
//
//   - capd: capd acquire OWNER:NAME -- /bin/true (start-up, dial, one
//     acquire, LISTEN_FDS environment, exec);
//   - s6: s6-fdholder-retrieve SOCKET ID /bin/true (a C program: connect,
//     one retrieve, exec with the fd at 0);
//   - capd-full: the same acquire run by capd-full, the binary with every
//     command and the agent (what capd cost when it was one binary);
//   - go-exec: a Go program that only execs /bin/true (what any Go binary
//     in front of a workload costs here);
//   - true: /bin/true alone.
//
// The four alternate in every round, rotating the order; the metrics are
// medians and ratios to s6.
func BenchmarkOneShot(b *testing.B) {
	a := startBenchAgent(b)
	s6 := startS6FDHolder(b)
	root, _ := filepath.Abs("..")
	execOnly, err := testutil.Build(root, b.TempDir(), "./tests/benchprogs/execonly")
	if err != nil {
		b.Fatal(err)
	}
	cmds := []struct {
		name string
		argv []string
		env  []string
	}{
		{"s6", []string{"s6-fdholder-retrieve", s6, "memfd:bench", "/bin/true"}, nil},
		{"capd", []string{capd, "acquire", a.owner + ":bench", "--", "/bin/true"}, []string{"CAPD_SOCKET=" + a.socket}},
		{"capd-full", []string{filepath.Join(filepath.Dir(capd), "capd-full"), "acquire", a.owner + ":bench", "--", "/bin/true"}, []string{"CAPD_SOCKET=" + a.socket}},
		{"go-exec", []string{execOnly, "/bin/true"}, nil},
		{"true", []string{"/bin/true"}, nil},
	}
	run := func(k int) time.Duration {
		c := exec.Command(cmds[k].argv[0], cmds[k].argv[1:]...)
		c.Env = append(os.Environ(), cmds[k].env...)
		start := time.Now()
		out, err := c.CombinedOutput()
		d := time.Since(start)
		if err != nil {
			b.Fatalf("%s: %v\n%s", cmds[k].name, err, out)
		}
		return d
	}
	times := make([][]time.Duration, len(cmds))
	for k := range cmds {
		run(k)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range cmds {
			k := (j + i) % len(cmds)
			times[k] = append(times[k], run(k))
		}
	}
	b.StopTimer()
	base := median(times[0])
	for k, c := range cmds {
		m := median(times[k])
		b.ReportMetric(m, c.name+"-ms")
		if k > 0 {
			b.ReportMetric(m/base, c.name+"/s6")
		}
	}
}

// startS6FDHolder runs s6-fdholder-daemon on a socket of its own, with
// rules that let root store and retrieve, holding one memfd as
// memfd:bench; it returns the socket path.
func startS6FDHolder(b *testing.B) string {
	for _, p := range []string{"s6-fdholder-daemon", "s6-fdholder-store", "s6-fdholder-retrieve"} {
		if _, err := exec.LookPath(p); err != nil {
			b.Fatalf("%s is missing (Debian package s6; bench/oneshot.sh installs it): %v", p, err)
		}
	}
	dir := b.TempDir()
	env := filepath.Join(dir, "rules", "uid", "0", "env")
	if err := os.MkdirAll(env, 0o755); err != nil {
		b.Fatal(err)
	}
	for name, content := range map[string]string{
		filepath.Join(dir, "rules", "uid", "0", "allow"): "",
		filepath.Join(env, "S6_FDHOLDER_STORE_REGEX"):    ".*\n",
		filepath.Join(env, "S6_FDHOLDER_RETRIEVE_REGEX"): ".*\n",
	} {
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "s")
	d := exec.Command("s6-fdholder-daemon", "-i", filepath.Join(dir, "rules"), sock)
	d.Stderr = os.Stderr
	if err := d.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Process.Kill(); d.Wait() })
	mem, err := os.CreateTemp(dir, "fd")
	if err != nil {
		b.Fatal(err)
	}
	defer mem.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := exec.Command("s6-fdholder-store", sock, "memfd:bench")
		st.Stdin = mem
		out, err := st.CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("s6-fdholder-store: %v\n%s", err, out)
		}
	}
	return sock
}
