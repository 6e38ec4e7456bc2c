package agent

import (
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/capd-dev/capd/agent/internal/metrics"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/internal/linux"
)

// counters are what the request path counts for the metrics endpoint:
// atomics only, no lock and no allocation per request. docs/METRICS.md
// lists what each means.
type counters struct {
	acquires, publishes, revokes   atomic.Uint64
	registrations, unregistrations atomic.Uint64
	connections                    atomic.Uint64 // admitted
	refused                        [numRefusals]atomic.Uint64
	denials                        [policy.NumActions][policy.NumClasses]atomic.Uint64
}

// connRefusal is the class of a refused connection.
type connRefusal uint8

const (
	refusedShuttingDown connRefusal = iota
	refusedLimit
	refusedRootReserve
	refusedPerUID
	refusedUnidentified
	numRefusals
)

var refusalKeys = [numRefusals]string{
	refusedShuttingDown: "shutting-down",
	refusedLimit:        "limit",
	refusedRootReserve:  "root-reserve",
	refusedPerUID:       "per-uid-limit",
	refusedUnidentified: "unidentified",
}

// denied counts a refusal of act with class.
func (c *counters) denied(act policy.Action, class policy.Class) {
	if int(act) < policy.NumActions && int(class) < policy.NumClasses {
		c.denials[act][class].Add(1)
	}
}

// renderMetrics writes the agent's metrics: the counters, and gauges read
// now, each taking at most one lock briefly.
func (s *Server) renderMetrics(t *metrics.Text) {
	st := &s.stats
	for _, c := range []struct {
		name, help string
		v          *atomic.Uint64
	}{
		{"capd_acquires_total", "Acquires answered with an entry's fd.", &st.acquires},
		{"capd_publishes_total", "Publishes acknowledged (stored, and durable where systemd keeps the store).", &st.publishes},
		{"capd_revokes_total", "Entries revoked.", &st.revokes},
		{"capd_registrations_total", "Containers registered.", &st.registrations},
		{"capd_unregistrations_total", "Containers unregistered by request (not counting those that ended with their cgroup).", &st.unregistrations},
		{"capd_connections_admitted_total", "Client connections admitted.", &st.connections},
	} {
		t.Family(c.name, metrics.Counter, c.help)
		t.Sample(c.name, c.v.Load())
	}

	t.Family("capd_denials_total", metrics.Counter, "Requests refused by policy, by action and by the class of the reason.")
	for a := range policy.Action(policy.NumActions) {
		listed := a.Denials()
		if a == policy.See {
			listed = nil // list hides what it may not show; it refuses nothing
		}
		for cl := range policy.Class(policy.NumClasses) {
			v := st.denials[a][cl].Load()
			if v != 0 || slices.Contains(listed, cl) {
				t.Sample("capd_denials_total", v, "action", a.Key(), "reason", cl.Key())
			}
		}
	}
	t.Family("capd_connections_refused_total", metrics.Counter, "Client connections refused, by reason.")
	for r := range connRefusal(numRefusals) {
		t.Sample("capd_connections_refused_total", st.refused[r].Load(), "reason", refusalKeys[r])
	}

	cfg := s.cfg.Load()
	entries, pinned := s.store.Counts()
	s.mu.Lock()
	conns := len(s.conns)
	s.mu.Unlock()
	open, err := linux.OpenFDs()
	gauges := []struct {
		name, help string
		v          int
	}{
		{"capd_entries", "Entries stored.", entries},
		{"capd_entries_pinned", "Entries stored with a pin.", pinned},
		{"capd_entries_limit", "Entries the whole store may hold: max_entries, or what the fd limit or systemd's fd store leaves room for if that is less.", s.maxEntries(cfg)},
		{"capd_containers", "Containers registered.", s.reg.Len()},
		{"capd_connections_open", "Client connections open.", conns},
		{"capd_watched_cgroups", "Cgroups the agent watches for going empty.", s.watcher.Len()},
		{"capd_open_fds", "File descriptors the agent has open.", open},
		{"capd_max_fds", "The agent's soft RLIMIT_NOFILE.", s.fdLimit},
	}
	for _, g := range gauges {
		if g.name == "capd_open_fds" && err != nil {
			continue
		}
		t.Family(g.name, metrics.Gauge, g.help)
		t.Sample(g.name, uint64(max(g.v, 0)))
	}
}

// startMetrics opens and starts the metrics endpoint m asks for; nil when
// m sets neither a socket nor an address.
func (s *Server) startMetrics(m policy.MetricsConfig) (*metrics.Endpoint, error) {
	if m.Socket == "" && m.Listen == "" {
		return nil, nil
	}
	e, err := metrics.Open(metrics.Options{Socket: m.Socket, Listen: m.ListenAddr(), Render: s.renderMetrics, Log: s.log})
	if err != nil {
		return nil, err
	}
	e.Start()
	s.log.Info("metrics endpoint listening", "listen", e.Addrs(), "path", metrics.Path)
	return e, nil
}

// describeMetrics is m for the log.
func describeMetrics(m policy.MetricsConfig) string {
	return fmt.Sprintf("socket=%q listen=%q allow_remote=%v", m.Socket, m.Listen, m.AllowRemote)
}
