package client

import (
	"fmt"

	"github.com/capd-dev/capd/internal/proto"
)

// Status is the agent's state as root sees it.
type Status struct {
	// Entries is how many entries the agent holds; MaxEntries how many it
	// may hold: max_entries, or what its fd limit leaves room for.
	Entries    uint64 `json:"entries"`
	MaxEntries uint64 `json:"max_entries"`
	// OpenFDs is how many fds the agent has open, against FDLimit, its
	// RLIMIT_NOFILE.
	OpenFDs uint64 `json:"open_fds"`
	FDLimit uint64 `json:"fd_limit"`
	// Watched is how many owner cgroups the agent watches for emptying.
	Watched uint64 `json:"watched_cgroups"`
	// Containers is how many containers the OCI hook registered.
	Containers uint64 `json:"containers"`
	// Enforcement is what a revoke does: "enforced" (the kernel refuses
	// every holder, BPF LSM) or "advisory"; EnforcedBy says by what, or
	// why not. InForce counts the kernel's keys of revocations in force;
	// Lost the enforced revocations the agent found lifted at its start.
	Enforcement string `json:"enforcement"`
	EnforcedBy  string `json:"enforced_by"`
	InForce     uint64 `json:"in_force"`
	Lost        uint64 `json:"lost"`
	// Nodes are the cgroups that hold entries, sorted by path, so that a
	// parent comes before its children.
	Nodes []Node `json:"cgroups"`
}

// Node is one cgroup's share of the store. Entries and Pinned count the
// cgroup and everything below it; Owned counts entries whose owner cgroup
// is this one. A nil limit does not limit.
type Node struct {
	Cgroup        string  `json:"cgroup"`
	Entries       uint64  `json:"entries"`
	Pinned        uint64  `json:"pinned"`
	Owned         uint64  `json:"owned"`
	MaxEntries    *uint64 `json:"max_entries,omitempty"`
	MaxPinned     *uint64 `json:"max_pinned,omitempty"`
	EntriesSource string  `json:"max_entries_from,omitempty"`
	PinnedSource  string  `json:"max_pinned_from,omitempty"`
}

// Status asks the agent for its state (root only).
func (c *Client) Status() (*Status, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &Status{}
	after := ""
	for {
		m := proto.NewMessage(c.out, proto.OpStatus, proto.CodeOK)
		if after != "" {
			m.String(proto.AttrAfter, after)
		}
		c.out = m.Bytes()
		attrs, _, err := c.roundTrip(proto.OpStatus, -1)
		if err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		more := false
		it := proto.Attrs(attrs)
		for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
			switch t {
			case proto.AttrEntries:
				st.Entries, err = proto.U64(v)
			case proto.AttrMaxEntries:
				st.MaxEntries, err = proto.U64(v)
			case proto.AttrOpenFDs:
				st.OpenFDs, err = proto.U64(v)
			case proto.AttrFDLimit:
				st.FDLimit, err = proto.U64(v)
			case proto.AttrWatched:
				st.Watched, err = proto.U64(v)
			case proto.AttrContainers:
				st.Containers, err = proto.U64(v)
			case proto.AttrEnforcement:
				st.Enforcement = string(v)
			case proto.AttrEnforcedBy:
				st.EnforcedBy = string(v)
			case proto.AttrInForce:
				st.InForce, err = proto.U64(v)
			case proto.AttrLost:
				st.Lost, err = proto.U64(v)
			case proto.AttrNode:
				var n Node
				if n, err = decodeNode(v); err == nil {
					st.Nodes = append(st.Nodes, n)
				}
			case proto.AttrMore:
				more = true
			}
		}
		if err == nil {
			err = it.Err()
		}
		if err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		if !more || len(st.Nodes) == 0 {
			return st, nil
		}
		after = st.Nodes[len(st.Nodes)-1].Cgroup
	}
}

func decodeNode(b []byte) (Node, error) {
	var n Node
	var err error
	u64 := func(v []byte) *uint64 {
		var x uint64
		x, err = proto.U64(v)
		return &x
	}
	it := proto.Attrs(b)
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch t {
		case proto.AttrCgroup:
			n.Cgroup = string(v)
		case proto.AttrEntries:
			n.Entries = *u64(v)
		case proto.AttrPinned:
			n.Pinned = *u64(v)
		case proto.AttrOwners:
			n.Owned = *u64(v)
		case proto.AttrMaxEntries:
			n.MaxEntries = u64(v)
		case proto.AttrMaxPinned:
			n.MaxPinned = u64(v)
		case proto.AttrEntriesSource:
			n.EntriesSource = string(v)
		case proto.AttrPinnedSource:
			n.PinnedSource = string(v)
		}
	}
	if err == nil {
		err = it.Err()
	}
	return n, err
}

// Reloaded is what the agent read on a reload.
type Reloaded struct {
	Files  []string `json:"files"`
	Grants uint64   `json:"grants"`
	Quotas uint64   `json:"quotas"`
}

// Reload asks the agent to re-read its configuration (host administrators
// only) and waits for the result: what it loaded, or an error wrapping
// ErrInvalidConfig that says why it kept the configuration in force.
func (c *Client) Reload() (*Reloaded, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpReload, proto.CodeOK)
	c.out = m.Bytes()
	attrs, _, err := c.roundTrip(proto.OpReload, -1)
	if err != nil {
		return nil, fmt.Errorf("reload: %w", err)
	}
	r := &Reloaded{Files: []string{}}
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch t {
		case proto.AttrFile:
			r.Files = append(r.Files, string(v))
		case proto.AttrGrants:
			r.Grants, err = proto.U64(v)
		case proto.AttrQuotas:
			r.Quotas, err = proto.U64(v)
		}
	}
	if err == nil {
		err = it.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("reload: %w: %v", ErrProtocol, err)
	}
	return r, nil
}
