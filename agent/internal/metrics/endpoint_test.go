package metrics

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

// start opens an endpoint on a unix socket in a temp dir (and on opts'
// TCP address, if any) whose exposition counts its renders.
func start(t *testing.T, opts Options) (*Endpoint, *atomic.Uint64) {
	t.Helper()
	var renders atomic.Uint64
	if opts.Socket == "" {
		opts.Socket = filepath.Join(t.TempDir(), "m.sock")
	}
	opts.Render = func(x *Text) {
		x.Family("test_renders_total", Counter, "Renders.")
		x.Sample("test_renders_total", renders.Add(1))
	}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	e.Start()
	return e, &renders
}

// exchange connects to the endpoint's socket, writes chunks with pause
// between them, and reads until the endpoint closes.
func exchange(t *testing.T, socket string, pause time.Duration, chunks ...string) string {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, ch := range chunks {
		if i > 0 {
			time.Sleep(pause)
		}
		if _, err := io.WriteString(c, ch); err != nil {
			t.Fatalf("write chunk %d: %v", i, err)
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the answer: %v (got %q)", err, b)
	}
	return string(b)
}

// response splits an answer into its status, header fields and body, and
// checks the framing every answer has.
func response(t *testing.T, raw string) (status int, header map[string]string, body string) {
	t.Helper()
	head, body, ok := strings.Cut(raw, "\r\n\r\n")
	if !ok {
		t.Fatalf("no end of head in %q", raw)
	}
	lines := strings.Split(head, "\r\n")
	proto, rest, _ := strings.Cut(lines[0], " ")
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if proto != "HTTP/1.1" || err != nil {
		t.Fatalf("status line %q", lines[0])
	}
	header = map[string]string{}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			t.Fatalf("header line %q", l)
		}
		header[k] = v
	}
	if header["Connection"] != "close" || header["Date"] == "" {
		t.Errorf("header %v lacks Connection: close or Date", header)
	}
	return status, header, body
}

func TestGetAndHead(t *testing.T) {
	e, _ := start(t, Options{})
	sock := e.Addrs()[0]
	status, h, body := response(t, exchange(t, sock, 0, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
	if status != 200 || h["Content-Type"] != ContentType || h["Content-Length"] != strconv.Itoa(len(body)) {
		t.Errorf("GET: %d %v %q", status, h, body)
	}
	if want := "# HELP test_renders_total Renders.\n# TYPE test_renders_total counter\ntest_renders_total 1\n"; body != want {
		t.Errorf("GET body %q, want %q", body, want)
	}
	status, h, body = response(t, exchange(t, sock, 0, "HEAD /metrics?x=y HTTP/1.0\r\n\r\n"))
	if status != 200 || body != "" || h["Content-Length"] != strconv.Itoa(len("# HELP test_renders_total Renders.\n# TYPE test_renders_total counter\ntest_renders_total 2\n")) {
		t.Errorf("HEAD: %d %v %q", status, h, body)
	}
	for _, tc := range []struct {
		req    string
		status int
	}{
		{"GET /other HTTP/1.1\r\n\r\n", 404},
		{"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405},
		{"GET /metrics HTTP/3.0\r\n\r\n", 505},
		{"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400},
	} {
		status, h, body := response(t, exchange(t, sock, 0, tc.req))
		if status != tc.status || h["Content-Type"] != "text/plain; charset=utf-8" || h["Content-Length"] != strconv.Itoa(len(body)) || body == "" {
			t.Errorf("%q: %d %v %q, want %d", tc.req, status, h, body, tc.status)
		}
		if tc.status == 405 && h["Allow"] != "GET, HEAD" {
			t.Errorf("405 without Allow: %v", h)
		}
	}
}

// A head that arrives a byte at a time is read to its end.
func TestPartialReads(t *testing.T) {
	e, _ := start(t, Options{})
	req := "GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n\r\n"
	chunks := strings.Split(req, "")
	if status, _, _ := response(t, exchange(t, e.Addrs()[0], time.Millisecond, chunks...)); status != 200 {
		t.Errorf("byte by byte: %d", status)
	}
	// Two halves, split inside the final CRLF CRLF.
	if status, _, _ := response(t, exchange(t, e.Addrs()[0], 20*time.Millisecond, req[:len(req)-3], req[len(req)-3:])); status != 200 {
		t.Errorf("split head: %d", status)
	}
}

// More than MaxHead bytes without the end of a head is 431, whether in
// one line or in many header fields.
func TestOversizedHead(t *testing.T) {
	e, renders := start(t, Options{})
	for _, req := range []string{
		strings.Repeat("A", MaxHead+100),
		"GET /metrics HTTP/1.1\r\n" + strings.Repeat("X-Pad: 0123456789\r\n", MaxHead/16),
	} {
		if status, _, _ := response(t, exchange(t, e.Addrs()[0], 0, req)); status != 431 {
			t.Errorf("%d bytes: %d, want 431", len(req), status)
		}
	}
	// A head of exactly MaxHead bytes is fine.
	req := "GET /metrics HTTP/1.1\r\nX-Pad: "
	req += strings.Repeat("p", MaxHead-len(req)-4) + "\r\n\r\n"
	if status, _, _ := response(t, exchange(t, e.Addrs()[0], 0, req)); len(req) != MaxHead || status != 200 {
		t.Errorf("%d bytes: %d, want 200", len(req), status)
	}
	if renders.Load() != 1 {
		t.Errorf("%d renders, want 1", renders.Load())
	}
}

// Whatever follows the head (a pipelined request, garbage, a body) is
// read and dropped: the one answer arrives whole, not reset.
func TestPipelinedGarbage(t *testing.T) {
	e, renders := start(t, Options{})
	junk := strings.Repeat("\x00garbage\xff", 2000)
	raw := exchange(t, e.Addrs()[0], 0, "GET /metrics HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n"+junk)
	status, h, body := response(t, raw)
	if status != 200 || h["Content-Length"] != strconv.Itoa(len(body)) || strings.Count(raw, "HTTP/1.1 ") != 1 {
		t.Errorf("pipelined: %q", raw)
	}
	if renders.Load() != 1 {
		t.Errorf("%d renders, want 1", renders.Load())
	}
}

// A client that stalls mid-head gets 408 at the deadline, and one that
// sends nothing is closed silently; neither holds the next scrape up for
// longer than the deadline.
func TestSlowClients(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e, _ := start(t, Options{Timeout: timeout})
	sock := e.Addrs()[0]

	slow, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "GET /metr"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // accepted first
	begin := time.Now()
	if status, _, _ := response(t, exchange(t, sock, 0, "GET /metrics HTTP/1.1\r\n\r\n")); status != 200 {
		t.Errorf("scrape behind a slow client: %d", status)
	}
	if took := time.Since(begin); took > timeout+time.Second {
		t.Errorf("scrape behind a slow client took %v", took)
	}
	slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(slow)
	if status, _, _ := response(t, string(b)); status != 408 {
		t.Errorf("stalled client got %d", status)
	}

	// A trickle does not extend the deadline.
	trickle, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer trickle.Close()
	begin = time.Now()
	for i := 0; i < 40; i++ {
		if _, err := io.WriteString(trickle, "X"); err != nil {
			break // the endpoint gave up and closed
		}
		time.Sleep(25 * time.Millisecond)
	}
	trickle.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ = io.ReadAll(trickle)
	if !strings.HasPrefix(string(b), "HTTP/1.1 408 ") {
		t.Errorf("trickling client got %q after %v", b, time.Since(begin))
	}

	silent, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	begin = time.Now()
	b, err = io.ReadAll(silent)
	if err != nil || len(b) != 0 || time.Since(begin) > timeout+time.Second {
		t.Errorf("silent client: %q, %v after %v", b, err, time.Since(begin))
	}
}

// Close ends a connection in progress at once, and removes the socket.
func TestCloseDuringConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "m.sock")
	e, err := Open(Options{Socket: sock, Timeout: time.Minute, Render: func(*Text) {}})
	if err != nil {
		t.Fatal(err)
	}
	e.Start()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /")
	time.Sleep(50 * time.Millisecond)
	begin := time.Now()
	e.Close()
	if took := time.Since(begin); took > time.Second {
		t.Errorf("Close took %v", took)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	e.Close()
}

// The socket is 0600; a stale one is replaced, a live one or another file
// refused.
func TestSocketFile(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "sub", "m.sock")
	e, _ := start(t, Options{Socket: sock})
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket: %v %v", fi.Mode(), err)
	}
	if _, err := Open(Options{Socket: sock, Render: func(*Text) {}}); err == nil || !strings.Contains(err.Error(), "already listens") {
		t.Errorf("a second endpoint on a live socket: %v", err)
	}
	e.Close()

	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // stale
	e2, _ := start(t, Options{Socket: sock})
	if status, _, _ := response(t, exchange(t, sock, 0, "GET /metrics HTTP/1.1\r\n\r\n")); status != 200 {
		t.Errorf("over a stale socket: %d", status)
	}
	e2.Close()

	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("keep"), 0o644)
	if _, err := Open(Options{Socket: plain, Render: func(*Text) {}}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep" {
		t.Errorf("the regular file was touched: %q", b)
	}
}

// A real HTTP client scrapes both listeners; port 0 is the one the kernel
// picked.
func TestHTTPClient(t *testing.T) {
	e, renders := start(t, Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	addrs := e.Addrs()
	if len(addrs) != 2 || strings.HasSuffix(addrs[1], ":0") {
		t.Fatalf("Addrs = %v", addrs)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", addrs[0])
	}}
	defer tr.CloseIdleConnections()
	for _, c := range []struct {
		client *http.Client
		url    string
	}{
		{&http.Client{Transport: tr}, "http://capd/metrics"},
		{&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}, "http://" + addrs[1] + "/metrics"},
	} {
		for _, method := range []string{"GET", "HEAD", "POST"} {
			req, _ := http.NewRequest(method, c.url, nil)
			resp, err := c.client.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, c.url, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := 200
			if method == "POST" {
				want = 405
			}
			if resp.StatusCode != want || (method == "GET" && !bytes.HasPrefix(b, []byte("# HELP test_renders_total"))) || !resp.Close {
				t.Errorf("%s %s: %d %q, close %v", method, c.url, resp.StatusCode, b, resp.Close)
			}
			if method == "GET" && resp.Header.Get("Content-Type") != ContentType {
				t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
			}
		}
	}
	if n := renders.Load(); n != 4 {
		t.Errorf("%d renders, want 4 (GET and HEAD on each)", n)
	}
	// The TCP listener speaks the same raw protocol.
	c, err := net.Dial("tcp", addrs[1])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /metrics HTTP/1.0\r\n\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	if line != "HTTP/1.1 200 OK\r\n" {
		t.Errorf("TCP: %q", line)
	}
}
