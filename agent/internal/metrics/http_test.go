package metrics

import (
	"strings"
	"testing"
	"time"
)

func TestHeadEnd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"", -1},
		{"GET /metrics HTTP/1.1\r\n", -1},
		{"GET /metrics HTTP/1.1\r\nHost: x\r\n", -1},
		{"GET /metrics HTTP/1.1\r\n\r", -1},
		{"GET /metrics HTTP/1.1\r\n\r\n", 25},
		{"GET /metrics HTTP/1.1\n\n", 23},
		{"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE", 34},
		{"\r\n\r\n", -1}, // empty lines before a request line do not end it
		{"\r\nGET / HTTP/1.1\r\n\r\n", 20},
	} {
		if got := headEnd([]byte(tc.in)); got != tc.want {
			t.Errorf("headEnd(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestParseHead(t *testing.T) {
	for _, tc := range []struct {
		head   string
		status int
		isHead bool
	}{
		{"GET /metrics HTTP/1.1\r\nHost: localhost:9417\r\nAccept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n\r\n", 200, false},
		{"GET /metrics HTTP/1.0\r\n\r\n", 200, false},
		{"HEAD /metrics HTTP/1.1\r\n\r\n", 200, true},
		{"GET /metrics?name[]=capd_entries&x HTTP/1.1\r\n\r\n", 200, false},
		{"GET /metrics#frag HTTP/1.1\r\n\r\n", 200, false},
		{"GET http://localhost:9417/metrics?a=b HTTP/1.1\r\n\r\n", 200, false},
		{"GET http://localhost:9417 HTTP/1.1\r\n\r\n", 404, false},
		{"\r\nGET /metrics HTTP/1.1\r\n\r\n", 200, false},
		{"GET /metrics HTTP/1.1\n\n", 200, false},
		{"GET /metrics HTTP/1.1\r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\n", 200, false},

		{"GET / HTTP/1.1\r\n\r\n", 404, false},
		{"GET /metrics/ HTTP/1.1\r\n\r\n", 404, false},
		{"GET /metricsx HTTP/1.1\r\n\r\n", 404, false},
		{"GET /%6detrics HTTP/1.1\r\n\r\n", 404, false},
		{"OPTIONS * HTTP/1.1\r\n\r\n", 404, false},
		{"HEAD /nothing HTTP/1.1\r\n\r\n", 404, true},
		{"PUT /other HTTP/1.1\r\n\r\n", 404, false},

		{"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 405, false},
		{"DELETE /metrics HTTP/1.1\r\n\r\n", 405, false},
		{"get /metrics HTTP/1.1\r\n\r\n", 405, false}, // methods are case-sensitive

		{"GET /metrics HTTP/2.0\r\n\r\n", 505, false},
		{"GET /metrics HTTP/0.9\r\n\r\n", 505, false},

		{"GET /metrics\r\n\r\n", 400, false}, // HTTP/0.9
		{"GET /metrics HTTP/1.10\r\n\r\n", 400, false},
		{"GET /metrics http/1.1\r\n\r\n", 400, false},
		{"GET  /metrics HTTP/1.1\r\n\r\n", 400, false},
		{"GET /metrics HTTP/1.1 \r\n\r\n", 400, false},
		{"G(T /metrics HTTP/1.1\r\n\r\n", 400, false},
		{"GET metrics HTTP/1.1\r\n\r\n", 400, false},
		{"GET /met\x00rics HTTP/1.1\r\n\r\n", 400, false},
		{"GET /m\xc3\xa9trics HTTP/1.1\r\n\r\n", 400, false},
		{"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, false},
		{"GET /metrics HTTP/1.1\r\nNoColon\r\n\r\n", 400, false},
		{"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, false},
		{"GET /metrics HTTP/1.1\r\n: x\r\n\r\n", 400, false},
		{"GET /metrics HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400, false},
		{"GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, false},
		{"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n\n", 400, false}, // a TLS ClientHello
		{"\r\n\r\n", 400, false},
	} {
		status, isHead := parseHead([]byte(tc.head))
		if status != tc.status || isHead != tc.isHead {
			t.Errorf("parseHead(%q) = %d, %v; want %d, %v", tc.head, status, isHead, tc.status, tc.isHead)
		}
	}
}

// parseHead answers anything with one of its statuses, never panicking.
func FuzzParseHead(f *testing.F) {
	for _, s := range []string{"GET /metrics HTTP/1.1\r\n\r\n", "HEAD http://x/metrics HTTP/1.0\n\n", "\r\n", "GET /metrics HTTP/1.1\r\n folded\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if end := headEnd(b); end >= 0 {
			b = b[:end]
		}
		status, _ := parseHead(b)
		if statusText[status] == "" {
			t.Fatalf("parseHead(%q) = %d", b, status)
		}
	})
}

func TestAppendResponse(t *testing.T) {
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.FixedZone("x", 3600))
	got := string(appendResponse(nil, 200, []byte("a 1\n"), false, now))
	want := "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 4\r\n" +
		"Date: Tue, 04 Mar 2025 04:06:07 GMT\r\nCache-Control: no-store\r\nConnection: close\r\n\r\na 1\n"
	if got != want {
		t.Errorf("200:\n%q\nwant\n%q", got, want)
	}
	got = string(appendResponse(nil, 200, []byte("a 1\n"), true, now))
	if want := strings.TrimSuffix(want, "a 1\n"); got != want {
		t.Errorf("200 to HEAD:\n%q\nwant\n%q", got, want)
	}
	got = string(appendResponse(nil, 405, nil, false, now))
	if !strings.HasPrefix(got, "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n") ||
		!strings.Contains(got, "\r\nAllow: GET, HEAD\r\n") || !strings.HasSuffix(got, "\r\n\r\nMethod Not Allowed\n") {
		t.Errorf("405:\n%q", got)
	}
}

func TestText(t *testing.T) {
	var x Text
	x.Reset(make([]byte, 0, 8))
	x.Family("capd_x_total", Counter, "Back\\slash and\nnewline.")
	x.Sample("capd_x_total", 0)
	x.Sample("capd_x_total", 18446744073709551615, "a", `q"uo\te`+"\n", "b", "plain")
	x.Family("capd_y", Gauge, "Y.")
	x.Sample("capd_y", 7)
	want := `# HELP capd_x_total Back\\slash and\nnewline.
# TYPE capd_x_total counter
capd_x_total 0
capd_x_total{a="q\"uo\\te\n",b="plain"} 18446744073709551615
# HELP capd_y Y.
# TYPE capd_y gauge
capd_y 7
`
	if got := string(x.Bytes()); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// Over TCP only a request naming this host by address or as localhost is
// answered: a web page whose name was rebound to 127.0.0.1 sends its own.
func TestLocalHost(t *testing.T) {
	for head, want := range map[string]bool{
		"GET /metrics HTTP/1.0\r\n":                                 true,
		"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9417\r\n":         true,
		"GET /metrics HTTP/1.1\r\nhost: [::1]:9417\r\n":             true,
		"GET /metrics HTTP/1.1\r\nHost: localhost:9417\r\n":         true,
		"GET /metrics HTTP/1.1\r\nHost: ::1\r\n":                    true,
		"GET /metrics HTTP/1.1\r\nHost: evil.example:9417\r\n":      false,
		"GET /metrics HTTP/1.1\r\nHost: evil.example\r\n":           false,
		"GET /metrics HTTP/1.1\r\nHost: localhost.evil.example\r\n": false,
	} {
		if got := localHost([]byte(head)); got != want {
			t.Errorf("localHost(%q) = %v, want %v", head, got, want)
		}
	}
}
