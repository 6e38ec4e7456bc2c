package cli

import (
	"strconv"
	"unicode/utf8"
)

// Escape makes s, a string the agent supplied (a cgroup path, an identity,
// an entry name, an error message), safe to print on a terminal. Cgroup
// names may hold any byte but '/' and '\n', so such strings can carry
// terminal escape sequences ("\x1b]0;title\a", "\x1b[2J").
//
// A string of printable text (strconv.IsPrint: letters of any script,
// marks, digits, punctuation, symbols, the ASCII space) that does not
// start with '"' is returned unchanged, backslashes included (systemd's
// "\x2d" escapes stay as they are). Any other string is returned quoted
// as a Go string literal (strconv.Quote): control characters (C0, DEL,
// C1), other non-printable runes and invalid UTF-8 become \a, \r, \x1b,
// \u0085, \xff and the like, and '\\' and '"' are escaped. The quotes keep
// the two forms apart: an escaped string never reads as a plain one.
func Escape(s string) string {
	if len(s) > 0 && s[0] == '"' {
		return strconv.Quote(s)
	}
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
		i += n
	}
	return s
}
