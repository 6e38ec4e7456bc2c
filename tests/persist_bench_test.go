package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
)

// BenchmarkPersistPublish is the publish round trip under a real systemd,
// with the fd store (the shipped capd.service), at two sizes in one run:
// two agents in one machine, one holding 10 entries and one 8,000,
// alternating chunks of 50 publishes between them (the order swapped every
// chunk) so that both see the same machine state. Each publish is a new
// pinned memfd replacing the same name, so that the count stays put. It
// reports each agent's µs per publish and their ratio, 8000/10. The
// publishing client runs inside the machine (this test binary in the
// "persist-bench" role, persistBenchRole).
func BenchmarkPersistPublish(b *testing.B) {
	sizes := []int{10, 8000}
	m := bootMachine(b)
	svc, err := os.ReadFile("../dist/capd.service")
	if err != nil {
		b.Fatal(err)
	}
	sock, err := os.ReadFile("../dist/capd.socket")
	if err != nil {
		b.Fatal(err)
	}
	bigSvc := strings.ReplaceAll(strings.ReplaceAll(string(svc), "/usr/bin/capd", "/run/capd-bin"), "capd.socket", "capd-big.socket")
	bigSvc = strings.ReplaceAll(bigSvc, "ExecReload=", "#ExecReload=")
	m.write("/run/systemd/system/capd-big.service", bigSvc, 0o644)
	m.write("/run/systemd/system/capd-big.socket", strings.ReplaceAll(string(sock), "/run/capd/capd.sock", "/run/capd-big/capd.sock"), 0o644)
	m.write("/etc/capd/capd.toml", "[[quota]]\nunit = \"pbench.service\"\nmax_entries = 10000\nmax_pinned = 10000\n", 0o644)
	m.must("systemctl", "daemon-reload")
	m.must("systemctl", "reload", "capd.service")
	m.must("systemctl", "start", "capd-big.socket", "capd-big.service")
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		b.Fatal(err)
	}
	m.write("/run/capd-tests", string(bin), 0o755)
	fill := make([]string, len(sizes))
	for i, n := range sizes {
		fill[i] = strconv.Itoa(n)
	}
	out := m.unit("pbench", "-E", "CAPD_TEST_ROLE=persist-bench",
		"-E", "CAPD_PB_SOCKETS=/run/capd/capd.sock,/run/capd-big/capd.sock",
		"-E", "CAPD_PB_FILL="+strings.Join(fill, ","), "-E", "CAPD_PB_N="+strconv.Itoa(b.N), "-E", "CAPD_PB_CHUNK=50",
		"/run/capd-tests")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var res persistBenchResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || len(res.NS) != len(sizes) {
		b.Fatalf("persist-bench role: %v\n%s", err, out)
	}
	b.ReportMetric(0, "ns/op")
	us := make([]float64, len(sizes))
	for i, n := range sizes {
		us[i] = float64(res.NS[i]) / float64(b.N) / 1e3
		b.ReportMetric(us[i], fmt.Sprintf("pub%d-us", n))
	}
	b.ReportMetric(us[1]/us[0], fmt.Sprintf("%d/%d", sizes[1], sizes[0]))
}

// persistBenchResult is what the persist-bench role prints: the time its
// publishes to each agent took, in total.
type persistBenchResult struct {
	NS []int64 `json:"ns"`
}

// persistBenchRole fills each agent of $CAPD_PB_SOCKETS with as many
// pinned entries as $CAPD_PB_FILL says (one of them "bench"), then
// publishes $CAPD_PB_N new memfds as "bench" with replace to each, in
// alternating chunks of $CAPD_PB_CHUNK, and prints persistBenchResult.
func persistBenchRole() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "persist-bench:", err); return 1 }
	socks := strings.Split(os.Getenv("CAPD_PB_SOCKETS"), ",")
	fills := strings.Split(os.Getenv("CAPD_PB_FILL"), ",")
	n, err1 := strconv.Atoi(os.Getenv("CAPD_PB_N"))
	chunk, err2 := strconv.Atoi(os.Getenv("CAPD_PB_CHUNK"))
	if err1 != nil || err2 != nil || len(socks) != len(fills) || chunk <= 0 {
		return fail(fmt.Errorf("bad environment"))
	}
	publish := func(c *client.Client, name string, replace bool) error {
		fd, err := unix.MemfdCreate("bench", unix.MFD_CLOEXEC)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), "bench")
		defer f.Close()
		return c.Publish(name, f, &client.PublishOptions{Pin: true, Replace: replace})
	}
	clients := make([]*client.Client, len(socks))
	for i, s := range socks {
		c, err := client.Dial(s)
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		c.SetTimeout(30 * time.Second)
		clients[i] = c
		want, err := strconv.Atoi(fills[i])
		if err != nil || want < 1 {
			return fail(fmt.Errorf("fill %q", fills[i]))
		}
		for j := 0; j < want-1; j++ {
			if err := publish(c, fmt.Sprintf("f%05d", j), true); err != nil {
				return fail(fmt.Errorf("fill %s: %w", s, err))
			}
		}
		if err := publish(c, "bench", true); err != nil {
			return fail(err)
		}
	}
	ns := make([]int64, len(socks))
	for done, round := 0, 0; done < n; done, round = done+chunk, round+1 {
		k := min(chunk, n-done)
		for j := range clients {
			i := (j + round) % len(clients)
			start := time.Now()
			for range k {
				if err := publish(clients[i], "bench", true); err != nil {
					return fail(err)
				}
			}
			ns[i] += int64(time.Since(start))
		}
	}
	json.NewEncoder(os.Stdout).Encode(persistBenchResult{NS: ns})
	return 0
}
