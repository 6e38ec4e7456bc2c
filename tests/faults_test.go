package tests

import (
	"testing"

	"github.com/capd-dev/capd/client"
)

// At the connection limit every refused client gets its busy reply (exit
// 8), never a reset that leaves it guessing whether the request took
// effect (issue: 11 of 20 tries ended in a reset, exit 1).
func TestBusyReplyArrives(t *testing.T) {
	e := newEnv(t, "[agent]\nmax_connections_per_uid = 2\n")
	for range 2 {
		c, err := client.Dial(e.agent.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Whoami(); err != nil {
			t.Fatal(err)
		}
	}
	codes := map[int]int{}
	for range 40 {
		r := e.run("", nil, "whoami")
		codes[r.code]++
		if r.code != 8 {
			t.Logf("exit %d: %s", r.code, r.stderr)
		}
	}
	if codes[8] != 40 {
		t.Fatalf("exit codes of 40 refused clients: %v, want all 8 (busy)", codes)
	}
}
