package metrics

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// MaxHead bounds a request head: request line and header fields. A longer
// one is answered 431.
const MaxHead = 4096

// Path is the one path served.
const Path = "/metrics"

// ContentType is the text exposition format's media type.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// The statuses the endpoint answers with.
const (
	statusOK               = 200
	statusBadRequest       = 400
	statusNotFound         = 404
	statusMethodNotAllowed = 405
	statusTimeout          = 408
	statusHeadTooLarge     = 431
	statusVersion          = 505
)

var statusText = map[int]string{
	statusOK:               "OK",
	statusBadRequest:       "Bad Request",
	statusNotFound:         "Not Found",
	statusMethodNotAllowed: "Method Not Allowed",
	statusTimeout:          "Request Timeout",
	statusHeadTooLarge:     "Request Header Fields Too Large",
	statusVersion:          "HTTP Version Not Supported",
}

// headEnd returns the length of the request head at the start of b,
// through the empty line that ends it (CRLF CRLF, or bare LFs, which a
// server may accept), or -1 while b holds no complete head. Empty lines
// before the request line are part of the head (RFC 9112 lets a server
// skip them).
func headEnd(b []byte) int {
	start, seen := 0, false // seen: a non-empty line
	for {
		i := bytes.IndexByte(b[start:], '\n')
		if i < 0 {
			return -1
		}
		line := b[start : start+i]
		start += i + 1
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			if seen {
				return start
			}
			continue
		}
		seen = true
	}
}

// parseHead answers a complete request head (as headEnd delimits it): the
// status, and whether the request is a HEAD (whose answer has no body).
// Malformed is 400, a major version other than 1 is 505, a path other than
// Path (any query string aside) is 404, a method other than GET and HEAD
// is 405. Header fields are checked for form and otherwise ignored: the
// answer does not depend on them.
func parseHead(head []byte) (status int, isHead bool) {
	lines := bytes.Split(head, []byte{'\n'})
	i := 0
	for i < len(lines) && len(bytes.TrimSuffix(lines[i], []byte{'\r'})) == 0 {
		i++ // empty lines before the request line
	}
	if i == len(lines) {
		return statusBadRequest, false
	}
	reqLine := bytes.TrimSuffix(lines[i], []byte{'\r'})
	for _, l := range lines[i+1:] {
		l = bytes.TrimSuffix(l, []byte{'\r'})
		if len(l) == 0 {
			break
		}
		if !validField(l) {
			return statusBadRequest, false
		}
	}
	parts := bytes.Split(reqLine, []byte{' '})
	if len(parts) != 3 {
		return statusBadRequest, false
	}
	method, target, version := parts[0], parts[1], parts[2]
	if !isToken(method) {
		return statusBadRequest, false
	}
	isHead = string(method) == "HEAD"
	switch {
	case len(version) != 8 || string(version[:5]) != "HTTP/" || !isDigit(version[5]) || version[6] != '.' || !isDigit(version[7]):
		return statusBadRequest, isHead
	case version[5] != '1':
		return statusVersion, isHead
	}
	path, ok := targetPath(target)
	switch {
	case !ok:
		return statusBadRequest, isHead
	case path != Path:
		return statusNotFound, isHead
	case !isHead && string(method) != "GET":
		return statusMethodNotAllowed, isHead
	}
	return statusOK, isHead
}

// targetPath returns the path of a request target: origin-form
// ("/metrics?x=y"), absolute-form ("http://host:port/metrics"), or "*".
func targetPath(t []byte) (string, bool) {
	for _, c := range t {
		if c <= ' ' || c >= 0x7f {
			return "", false
		}
	}
	switch {
	case string(t) == "*":
		return "*", true
	case bytes.HasPrefix(t, []byte("http://")), bytes.HasPrefix(t, []byte("https://")):
		_, rest, _ := bytes.Cut(t, []byte("://"))
		i := bytes.IndexAny(rest, "/?")
		if i < 0 || rest[i] == '?' {
			return "/", true
		}
		t = rest[i:]
	case len(t) == 0 || t[0] != '/':
		return "", false
	}
	if i := bytes.IndexAny(t, "?#"); i >= 0 {
		t = t[:i]
	}
	return string(t), true
}

// validField reports whether l is a header field line: a token, a colon,
// and a value of visible characters, spaces and tabs. A line folded onto
// the previous one (obs-fold) is not.
func validField(l []byte) bool {
	name, value, ok := bytes.Cut(l, []byte{':'})
	if !ok || !isToken(name) {
		return false
	}
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isToken reports whether b is an RFC 9110 token: what methods and field
// names are.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', isDigit(c):
		case c < 0x7f && c > ' ' && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0:
		default:
			return false
		}
	}
	return true
}

// appendResponse appends the answer with status to b: the status line,
// the header fields and, unless omitBody (HEAD), the body. A 200's body
// is the exposition; any other status's is its reason phrase.
func appendResponse(b []byte, status int, body []byte, omitBody bool, now time.Time) []byte {
	text := statusText[status]
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, text...)
	b = append(b, "\r\nContent-Type: "...)
	if status == statusOK {
		b = append(b, ContentType...)
	} else {
		body = append([]byte(text), '\n')
		b = append(b, "text/plain; charset=utf-8"...)
	}
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\nDate: "...)
	b = now.UTC().AppendFormat(b, "Mon, 02 Jan 2006 15:04:05 GMT")
	if status == statusMethodNotAllowed {
		b = append(b, "\r\nAllow: GET, HEAD"...)
	}
	b = append(b, "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"...)
	if !omitBody {
		b = append(b, body...)
	}
	return b
}

// localHost reports whether the request head's Host field, if it has one,
// names this host by an IP literal or "localhost" (with or without a
// port), as a scraper does and a rebound web page's name does not.
func localHost(head []byte) bool {
	for _, l := range bytes.Split(head, []byte{'\n'}) {
		name, value, ok := bytes.Cut(bytes.TrimSuffix(l, []byte{'\r'}), []byte{':'})
		if !ok || !bytes.EqualFold(bytes.TrimSpace(name), []byte("host")) {
			continue
		}
		h := string(bytes.TrimSpace(value))
		switch {
		case strings.HasPrefix(h, "["): // [v6]:port or [v6]
			if i := strings.IndexByte(h, ']'); i > 0 {
				h = h[1:i]
			}
		case strings.Count(h, ":") == 1: // name:port, v4:port
			h, _, _ = strings.Cut(h, ":")
		}
		_, err := netip.ParseAddr(h)
		return err == nil || strings.EqualFold(h, "localhost")
	}
	return true
}
