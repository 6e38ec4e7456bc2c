package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/testutil"
)

// A start whose restored ledger names enforced revocations but that has
// no kernel state to adopt says loudly which no longer hold, and counts
// them for status; revocations made while restoring are not lost.
func TestLostEnforcementReported(t *testing.T) {
	testutil.RequireRoot(t)
	var log bytes.Buffer
	srv, err := New(policy.Default(), slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if rest := srv.StartEnforcement(nil); len(rest) != 0 {
		t.Fatalf("StartEnforcement returned %v", rest)
	}
	if srv.enf != nil {
		t.Fatal("this test machine's kernel refuses BPF LSM; the agent says it enforces")
	}
	old := srv.started.Add(-time.Hour)
	srv.store.SetLedger([]store.Revoked{
		{ID: "e-3.a.service.tok", Seq: 3, Key: store.Key{Owner: "a.service", Name: "tok"}, At: old},
		{ID: "e-9.a.service.cfg_g9", Seq: 9, Key: store.Key{Owner: "a.service", Name: "cfg#g9"}, At: old},
		{ID: "e-12.a.service.new", Seq: 12, Key: store.Key{Owner: "a.service", Name: "new"}, At: srv.started.Add(time.Millisecond)},
	})
	srv.CheckLedger()
	out := log.String()
	if srv.lost != 2 || !strings.Contains(out, "KERNEL ENFORCEMENT LOST") || !strings.Contains(out, "a.service:tok (e-3.a.service.tok") || !strings.Contains(out, "a.service:cfg#g9") || strings.Contains(out, "a.service:new") {
		t.Fatalf("lost %d; log:\n%s", srv.lost, out)
	}
	if l := srv.store.Ledger(); len(l) != 1 || l[0].Seq != 12 {
		t.Fatalf("the ledger keeps %v, want only what this process revoked", l)
	}
	if !strings.Contains(out, "revocation is advisory") {
		t.Fatalf("the log does not say revocation is advisory:\n%s", out)
	}
}
