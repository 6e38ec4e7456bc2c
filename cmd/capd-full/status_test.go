package main

import (
	"strings"
	"testing"
)

// The status tree escapes the last component only, after the indentation.
func TestTreeEscapes(t *testing.T) {
	if got, want := tree("/a.slice/\x1b[2J"), `    "/\x1b[2J"`; got != want {
		t.Errorf("tree = %q, want %q", got, want)
	}
	if got := tree("/a.slice/b.service"); got != "    /b.service" {
		t.Errorf("tree = %q", got)
	}
	if got := limit(new(uint64), "quota cgroup=/\x1b"); strings.ContainsRune(got, 0x1b) {
		t.Errorf("limit = %q", got)
	}
}
