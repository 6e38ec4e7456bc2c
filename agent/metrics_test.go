package agent

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/capd-dev/capd/agent/internal/metrics"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/proto"
)

// scrape renders s's metrics and parses them: every family's HELP and
// TYPE come before its samples, once; no series appears twice.
func scrape(t *testing.T, s *Server) map[string]uint64 {
	t.Helper()
	var x metrics.Text
	s.renderMetrics(&x)
	out := map[string]uint64{}
	typed := map[string]string{}
	var family string
	for _, l := range strings.Split(strings.TrimSuffix(string(x.Bytes()), "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "# HELP "):
			family, _, _ = strings.Cut(strings.TrimPrefix(l, "# HELP "), " ")
			if _, dup := typed[family]; dup {
				t.Errorf("family %s twice", family)
			}
			typed[family] = ""
		case strings.HasPrefix(l, "# TYPE "):
			name, typ, _ := strings.Cut(strings.TrimPrefix(l, "# TYPE "), " ")
			if name != family || typed[family] != "" {
				t.Errorf("TYPE %q not right after its HELP", l)
			}
			typed[family] = typ
		default:
			series, v, ok := strings.Cut(l, " ")
			name, _, _ := strings.Cut(series, "{")
			n, err := strconv.ParseUint(v, 10, 64)
			if !ok || err != nil || name != family || typed[family] == "" {
				t.Errorf("sample %q outside its family %s", l, family)
			}
			if _, dup := out[series]; dup {
				t.Errorf("series %s twice", series)
			}
			out[series] = n
		}
	}
	return out
}

// The request path counts what it did and what it refused; the gauges
// say what the store holds now.
func TestMetricsCount(t *testing.T) {
	cfg := policy.Default()
	cfg.Agent.MaxConnectionsPerUID = 3
	s := startServer(t, cfg)
	before := scrape(t, s.Server)
	for _, k := range []string{"capd_acquires_total", "capd_publishes_total", `capd_denials_total{action="acquire",reason="not-granted"}`,
		`capd_denials_total{action="audit",reason="cap-sys-ptrace"}`, `capd_connections_refused_total{reason="per-uid-limit"}`, "capd_entries", "capd_entries_pinned"} {
		if v, ok := before[k]; !ok || v != 0 {
			t.Errorf("before anything: %s = %d, %v; want 0", k, v, ok)
		}
	}
	if before["capd_max_fds"] == 0 || before["capd_open_fds"] == 0 || before["capd_entries_limit"] == 0 {
		t.Errorf("fd gauges: %v", before)
	}

	c, err := client.Dial(s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me := s.identity(t)
	f := memFile(t)
	if err := c.Publish("pinned", f, &client.PublishOptions{Pin: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish("plain", f, nil); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		g, err := c.Acquire(me, "pinned")
		if err != nil {
			t.Fatal(err)
		}
		g.Close()
	}
	var perr *proto.Error
	for range 2 {
		if _, err := c.Acquire("other.service", "x"); !errors.As(err, &perr) || perr.Code != proto.CodePermissionDenied {
			t.Fatalf("acquire of an ungranted entry: %v", err)
		}
	}
	if err := c.Revoke("plain"); err != nil {
		t.Fatal(err)
	}
	// The per-uid limit refuses a fourth connection (the client holds one).
	r1, r2 := s.dial(t), s.dial(t)
	defer r1.close()
	defer r2.close()
	for _, r := range []*raw{r1, r2} {
		r.send(msg(proto.OpWhoami, nil))
		if h, _, _, eof := r.reply(); eof || h.Code != proto.CodeOK {
			t.Fatal("connection refused below the limit")
		}
	}
	extra := s.dial(t)
	extra.expectError(proto.CodeBusy, "uid 0 has 3 connections", true)

	// The client's, r1's and r2's (identity's may take a moment to end).
	waitFor(t, func() bool { return scrape(t, s.Server)["capd_connections_open"] == 3 })
	got := scrape(t, s.Server)
	for k, want := range map[string]uint64{
		"capd_publishes_total": 2, "capd_acquires_total": 3, "capd_revokes_total": 1,
		`capd_denials_total{action="acquire",reason="not-granted"}`: 2,
		`capd_denials_total{action="acquire",reason="audience"}`:    0,
		`capd_connections_refused_total{reason="per-uid-limit"}`:    1,
		`capd_connections_refused_total{reason="limit"}`:            0,
		"capd_entries": 1, "capd_entries_pinned": 1,
		"capd_containers": 0, "capd_registrations_total": 0,
	} {
		if got[k] != want {
			t.Errorf("%s = %d, want %d", k, got[k], want)
		}
	}
	// The whoami of identity, the client's, r1's and r2's; not the refused.
	if n := got["capd_connections_admitted_total"] - before["capd_connections_admitted_total"]; n != 4 {
		t.Errorf("%d connections admitted, want 4", n)
	}
	if _, ok := got[`capd_denials_total{action="publish",reason="not-granted"}`]; ok {
		t.Error("a series for a refusal that cannot happen")
	}
}
