package tests

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

// promText parses a text exposition strictly: every sample's family has
// its HELP and TYPE lines, once each and before its samples; no series
// appears twice; values are numbers. It returns the value of each series.
func promText(t *testing.T, body string) map[string]float64 {
	t.Helper()
	series := map[string]float64{}
	help, typ := map[string]bool{}, map[string]string{}
	var family string
	if !strings.HasSuffix(body, "\n") {
		t.Errorf("exposition does not end in a newline")
	}
	nameRE := regexp.MustCompile(`^capd_[a-z_]+$`)
	sampleRE := regexp.MustCompile(`^(capd_[a-z_]+)(\{([a-z_]+="[^"\\]*")(,[a-z_]+="[^"\\]*")*\})? (\S+)$`)
	for i, l := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "# HELP "):
			name, text, _ := strings.Cut(strings.TrimPrefix(l, "# HELP "), " ")
			if !nameRE.MatchString(name) || help[name] || text == "" {
				t.Errorf("line %d: bad or repeated HELP %q", i+1, l)
			}
			help[name], family = true, name
		case strings.HasPrefix(l, "# TYPE "):
			name, kind, _ := strings.Cut(strings.TrimPrefix(l, "# TYPE "), " ")
			if name != family || typ[name] != "" || (kind != "counter" && kind != "gauge") {
				t.Errorf("line %d: TYPE %q not right after its HELP, or repeated", i+1, l)
			}
			typ[name] = kind
			if kind == "counter" && !strings.HasSuffix(name, "_total") || kind == "gauge" && strings.HasSuffix(name, "_total") {
				t.Errorf("line %d: %s %s breaks the _total convention", i+1, kind, name)
			}
		case strings.HasPrefix(l, "#"), l == "":
			t.Errorf("line %d: unexpected %q", i+1, l)
		default:
			m := sampleRE.FindStringSubmatch(l)
			if m == nil {
				t.Errorf("line %d: malformed sample %q", i+1, l)
				continue
			}
			if m[1] != family || typ[family] == "" {
				t.Errorf("line %d: sample %q outside its family (in %s)", i+1, l, family)
			}
			key := strings.TrimSuffix(l, " "+m[5])
			if _, dup := series[key]; dup {
				t.Errorf("line %d: series %s twice", i+1, key)
			}
			v, err := strconv.ParseFloat(m[5], 64)
			if err != nil {
				t.Errorf("line %d: value %q: %v", i+1, m[5], err)
			}
			series[key] = v
		}
	}
	return series
}

// metricsClient is an HTTP client whose every connection goes to the
// unix socket path.
func metricsClient(path string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// scrapeMetrics GETs url with c and parses the answer.
func scrapeMetrics(t *testing.T, c *http.Client, url string) map[string]float64 {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; version=0.0.4; charset=utf-8" ||
		resp.ContentLength != int64(len(body)) || !resp.Close {
		t.Fatalf("scrape %s: %s %v (%d bytes)", url, resp.Status, resp.Header, len(body))
	}
	return promText(t, string(body))
}

// The agent counts acquires and a denied acquire, serves them on its
// 0600 unix socket with the gauges, says a changed [metrics] needs a
// restart, and removes the socket when it stops.
func TestMetricsEndToEnd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "metrics.sock")
	policy := `
[metrics]
socket = "` + sock + `"

[[grant]]
consumer = "zincati.service"
acquire  = ["rpm-ostreed.service:zincati-fd"]
`
	e := newEnv(t, policy, "rpm-ostreed.service", "zincati.service", "evil.service")
	e.agent.WaitLog(t, "metrics endpoint listening", 0)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("metrics socket: %v, %v", fi, err)
	}
	c := metricsClient(sock)
	before := scrapeMetrics(t, c, "http://capd/metrics")
	for _, k := range []string{"capd_acquires_total", "capd_publishes_total", "capd_entries", "capd_entries_pinned",
		`capd_denials_total{action="acquire",reason="not-granted"}`, `capd_connections_refused_total{reason="limit"}`} {
		if v, ok := before[k]; !ok || v != 0 {
			t.Errorf("at start %s = %v (present %v), want 0", k, v, ok)
		}
	}

	e.publishFile("rpm-ostreed.service", "zincati-fd", "x", "--pin")
	e.publishFile("rpm-ostreed.service", "other", "y")
	for range 2 {
		e.mustRun("zincati.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true")
	}
	if r := e.run("evil.service", nil, "acquire", "rpm-ostreed.service:zincati-fd", "--", "true"); r.code == 0 {
		t.Fatalf("evil.service acquired an entry it has no grant for")
	}
	e.agent.WaitLog(t, "denied", 0)

	got := scrapeMetrics(t, c, "http://capd/metrics?from=test")
	for k, want := range map[string]float64{
		"capd_acquires_total":  2,
		"capd_publishes_total": 2,
		`capd_denials_total{action="acquire",reason="not-granted"}`: 1,
		`capd_denials_total{action="acquire",reason="audience"}`:    0,
		`capd_denials_total{action="revoke",reason="not-owner"}`:    0,
		"capd_entries":        2,
		"capd_entries_pinned": 1,
		"capd_containers":     0,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	if n := got["capd_connections_admitted_total"] - before["capd_connections_admitted_total"]; n < 5 {
		t.Errorf("%v connections admitted for 5 commands", n)
	}
	if got["capd_open_fds"] < 2 || got["capd_max_fds"] < got["capd_open_fds"] || got["capd_entries_limit"] < 2 || got["capd_watched_cgroups"] < 1 {
		t.Errorf("gauges: open_fds %v max_fds %v entries_limit %v watched %v", got["capd_open_fds"], got["capd_max_fds"], got["capd_entries_limit"], got["capd_watched_cgroups"])
	}

	// HEAD, another path, another method, garbage: each answered and closed.
	for _, tc := range []struct{ req, status string }{
		{"HEAD /metrics HTTP/1.1\r\nHost: capd\r\n\r\n", "HTTP/1.1 200 OK"},
		{"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"},
		{"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "HTTP/1.1 405 Method Not Allowed"},
		{"\x16\x03\x01\x00\x05hello\r\n\r\n", "HTTP/1.1 400 Bad Request"},
	} {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, tc.req)
		b, err := io.ReadAll(conn)
		conn.Close()
		line, _, _ := strings.Cut(string(b), "\r\n")
		if err != nil || line != tc.status {
			t.Errorf("%q: %q, %v; want %q", tc.req, line, err, tc.status)
		}
		if strings.HasPrefix(tc.req, "HEAD") && !strings.HasSuffix(string(b), "\r\n\r\n") {
			t.Errorf("HEAD answered with a body: %q", b)
		}
	}

	// The agent reads [metrics] at start only.
	e.agent.Reload(t, strings.Replace(policy, "metrics.sock", "other.sock", 1))
	e.agent.WaitLog(t, "restart the agent to apply it", 0)
	if got := scrapeMetrics(t, c, "http://capd/metrics"); got["capd_acquires_total"] != 2 {
		t.Errorf("after a reload capd_acquires_total = %v", got["capd_acquires_total"])
	}
	e.agent.Stop()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("metrics socket left behind after the agent stopped: %v", err)
	}
}

// listen = "127.0.0.1:0" serves on the port the log names.
func TestMetricsTCPLoopback(t *testing.T) {
	testutil.RequireRoot(t)
	a := testutil.StartAgent(t, capd, "[metrics]\nlisten = \"127.0.0.1:0\"\n")
	a.WaitLog(t, "metrics endpoint listening", 0)
	m := regexp.MustCompile(`metrics endpoint listening.*127\.0\.0\.1:([0-9]+)`).FindStringSubmatch(a.Log.String())
	if m == nil || m[1] == "0" {
		t.Fatalf("no port in the log:\n%s", a.Log)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	got := scrapeMetrics(t, c, "http://127.0.0.1:"+m[1]+"/metrics")
	if _, ok := got["capd_connections_open"]; !ok {
		t.Errorf("no capd_connections_open in %v", got)
	}
	// Raw, HTTP/1.0.
	conn, err := net.Dial("tcp", "127.0.0.1:"+m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /metrics HTTP/1.0\r\n\r\n")
	if line, _ := bufio.NewReader(conn).ReadString('\n'); line != "HTTP/1.1 200 OK\r\n" {
		t.Errorf("HTTP/1.0 request: %q", line)
	}
}

// A TCP address beyond loopback is refused at load, with file and line,
// by check-config and by the agent, unless allow_remote is set.
func TestMetricsRemoteListenRefused(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "capd.toml")
	os.WriteFile(bad, []byte("[metrics]\nlisten = \"0.0.0.0:9417\"\n"), 0o644)
	expectFail(t, runCapd(t, "check-config", bad), 1, bad+":2:1: metrics.listen \"0.0.0.0:9417\" is not a loopback address", "allow_remote")
	r := runCapd(t, "agent", "--config", bad, "--socket", filepath.Join(dir, "s"))
	expectFail(t, r, r.code, bad+":2:1: metrics.listen")
	if r.code == 0 {
		t.Fatal("the agent started with a non-loopback metrics address")
	}
	os.Mkdir(filepath.Join(dir, "conf.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "conf.d", "50-remote.toml"), []byte("[metrics]\nallow_remote = true\n"), 0o644)
	if r := runCapd(t, "check-config", bad); r.code != 0 {
		t.Errorf("with allow_remote in a drop-in: exit %d %s", r.code, r.stderr)
	}
}
