package cli

import (
	"strconv"
	"testing"
	"time"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// Printable text is unchanged, backslashes and all.
		{"", ""},
		{"rpm-ostreed.service", "rpm-ostreed.service"},
		{"cgroup:/system.slice/x y", "cgroup:/system.slice/x y"},
		{`system-foo\x2dbar.slice`, `system-foo\x2dbar.slice`},
		{`a\b`, `a\b`},
		{"grüße-日本語-Ωμέγα", "grüße-日本語-Ωμέγα"},
		{`quota cgroup="/a"`, `quota cgroup="/a"`},
		// Control characters, as Go escapes in a quoted string.
		{"\x1b]0;pwned\x07", `"\x1b]0;pwned\a"`},
		{"/\x1b[2J", `"/\x1b[2J"`},
		{"a\rb", `"a\rb"`},
		{"a\nb\tc\x00", `"a\nb\tc\x00"`},
		{"del\x7f", `"del\x7f"`},
		{"c1\u0080\u009b2J\u009f", `"c1\u0080\u009b2J\u009f"`},
		{"bidi\u202egnp.exe", `"bidi\u202egnp.exe"`},
		// Invalid UTF-8, byte by byte.
		{"bad\xff\xc3", `"bad\xff\xc3"`},
		// Once quoted, backslashes and quotes are escaped too, so that the
		// result is unambiguous.
		{"\x1b" + `\x1b"`, `"\x1b\\x1b\""`},
		// A plain string never reads as a quoted one.
		{`"\x1b"`, `"\"\\x1b\""`},
	} {
		got := Escape(tc.in)
		if got != tc.want {
			t.Errorf("Escape(%q) = %s, want %s", tc.in, got, tc.want)
		}
		for _, c := range got {
			if c < 0x20 || (c >= 0x7f && c <= 0x9f) {
				t.Errorf("Escape(%q) = %q keeps control character %U", tc.in, got, c)
			}
		}
		if got != tc.in {
			if back, err := strconv.Unquote(got); err != nil || back != tc.in {
				t.Errorf("Escape(%q) = %s does not unquote to the input: %q, %v", tc.in, got, back, err)
			}
		}
	}
}

// --wait takes Go's durations and systemd's time spans.
func TestParseSpan(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"30s": 30 * time.Second, "1min": time.Minute, "1min 30s": 90 * time.Second, "1m30s": 90 * time.Second,
		"2h": 2 * time.Hour, "500msec": 500 * time.Millisecond, "5 minutes": 5 * time.Minute, "1hr": time.Hour,
	} {
		if got, err := ParseSpan(in); err != nil || got != want {
			t.Errorf("ParseSpan(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1", "1mon", "x"} {
		if _, err := ParseSpan(in); err == nil {
			t.Errorf("ParseSpan(%q) accepted", in)
		}
	}
}
