package activation

import (
	"os"
	"strconv"
	"testing"
)

func TestFiles(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		pid, fds, names string
		want            []File
		match           bool
	}{
		{me, "2", "a:b", []File{{3, "a"}, {4, "b"}}, true},
		{me, "2", "a", []File{{3, "unknown"}, {4, "unknown"}}, false},
		{me, "1", "", []File{{3, "unknown"}}, false},
		{"1", "2", "a:b", nil, false},
		{me, "x", "", nil, false},
		{me, "0", "", nil, false},
	} {
		t.Setenv("LISTEN_PID", tc.pid)
		t.Setenv("LISTEN_FDS", tc.fds)
		t.Setenv("LISTEN_FDNAMES", tc.names)
		got, match := Files()
		if len(got) != len(tc.want) || match != tc.match {
			t.Errorf("%+v: %v %v", tc, got, match)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%+v: %v", tc, got)
			}
		}
	}
	Unset()
	if os.Getenv("LISTEN_FDS") != "" {
		t.Error("Unset left LISTEN_FDS")
	}
}
