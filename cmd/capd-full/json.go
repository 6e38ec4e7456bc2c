package main

// The --json outputs of capd: a contract of the command line, documented
// key by key in docs/JSON.md (TestJSONMatchesDocs holds the two together).
// The types here are the CLI's own, converted from the client's and the
// protocol's, so that a change to those cannot silently change what
// scripts read.
//
// Every output is one JSON object whose first key is "version", the
// format's version (jsonVersion). Within a version keys may be added, never
// removed, renamed or given another type or meaning; an incompatible change
// bumps it. Every key is always present: there is no omitempty, a value
// that does not exist is null, an empty list is []. Keys are snake_case.
// Times are RFC 3339 in UTC with milliseconds (jsonTimeFormat).

import (
	"encoding/json"
	"io"
	"time"

	"github.com/capd-dev/capd/client"
)

// jsonVersion is the version of the --json formats.
const jsonVersion = 1

// jsonTimeFormat is how every time is written: RFC 3339, UTC, milliseconds.
const jsonTimeFormat = "2006-01-02T15:04:05.000Z"

// jsonDoc is an output of --json: one of the types below.
type jsonDoc interface{ jsonDoc() }

// printJSON writes v as indented JSON, the --json output of every command.
func printJSON(w io.Writer, v jsonDoc) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// formatVersion is the "version" key of every output. It always writes
// jsonVersion, so that no value of an output type, not even the zero one,
// can say another version.
type formatVersion struct{}

func (formatVersion) MarshalJSON() ([]byte, error) {
	return json.Marshal(jsonVersion)
}

// jsonList is a list that is written as [] when it is nil, never as null.
type jsonList[T any] []T

func (l jsonList[T]) MarshalJSON() ([]byte, error) {
	if l == nil {
		return []byte("[]"), nil
	}
	return json.Marshal([]T(l))
}

// jsonTime is a time, written in jsonTimeFormat.
type jsonTime time.Time

func (t jsonTime) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Time(t).UTC().Format(jsonTimeFormat))
}

// timeOrNull is t, or nil (null) for the zero time.
func timeOrNull(t time.Time) *jsonTime {
	if t.IsZero() {
		return nil
	}
	jt := jsonTime(t)
	return &jt
}

// stringOrNull is s, or nil (null) for "".
func stringOrNull(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// listJSON is the output of capd list --json.
type listJSON struct {
	Version formatVersion       `json:"version"`
	Entries jsonList[entryJSON] `json:"entries"`
}

type entryJSON struct {
	Owner       string              `json:"owner"`
	Name        string              `json:"name"`
	Kind        string              `json:"kind"`
	Pinned      bool                `json:"pinned"`
	Cgroup      string              `json:"cgroup"`
	Published   jsonTime            `json:"published"`
	Expires     *jsonTime           `json:"expires"`
	Acquired    uint64              `json:"acquired"`
	Allow       jsonList[string]    `json:"allow"`
	Restrict    jsonList[string]    `json:"restrict"`
	Enforcement string              `json:"enforcement"`
	Grants      jsonList[grantJSON] `json:"grants"`
}

type grantJSON struct {
	ID       string           `json:"id"`
	Grantee  string           `json:"grantee"`
	UID      *uint32          `json:"uid"`
	Parent   *string          `json:"parent"`
	Depth    int              `json:"depth"`
	Restrict jsonList[string] `json:"restrict"`
	Acquired uint64           `json:"acquired"`
	Made     jsonTime         `json:"made"`
	Expires  *jsonTime        `json:"expires"`
}

func newGrantsJSON(gs []client.Grant) jsonList[grantJSON] {
	out := jsonList[grantJSON]{}
	for _, g := range gs {
		j := grantJSON{ID: g.ID, Grantee: g.Grantee, Depth: g.Depth, Restrict: jsonList[string](g.Restrict),
			Acquired: g.Acquired, Made: jsonTime(g.Made), Expires: timeOrNull(g.Expires)}
		if g.UID != ^uint32(0) {
			uid := g.UID
			j.UID = &uid
		}
		if g.Parent != "" {
			p := g.Parent
			j.Parent = &p
		}
		out = append(out, j)
	}
	return out
}

func newListJSON(entries []client.Entry) listJSON {
	out := listJSON{Entries: jsonList[entryJSON]{}}
	for _, e := range entries {
		out.Entries = append(out.Entries, entryJSON{
			Owner:       e.Owner,
			Name:        e.Name,
			Kind:        e.Kind,
			Pinned:      e.Pinned,
			Cgroup:      e.Cgroup,
			Published:   jsonTime(e.Published),
			Expires:     timeOrNull(e.Expires),
			Acquired:    e.Acquired,
			Allow:       jsonList[string](e.Allow),
			Restrict:    jsonList[string](e.Restrict),
			Enforcement: e.Enforcement,
			Grants:      newGrantsJSON(e.Grants),
		})
	}
	return out
}

// statusJSON is the output of capd status --json.
type statusJSON struct {
	Version        formatVersion        `json:"version"`
	Entries        uint64               `json:"entries"`
	MaxEntries     uint64               `json:"max_entries"`
	OpenFDs        uint64               `json:"open_fds"`
	FDLimit        uint64               `json:"fd_limit"`
	WatchedCgroups uint64               `json:"watched_cgroups"`
	Containers     uint64               `json:"containers"`
	Enforcement    string               `json:"enforcement"`
	EnforcedBy     string               `json:"enforced_by"`
	InForce        uint64               `json:"in_force"`
	Lost           uint64               `json:"lost_revocations"`
	Cgroups        jsonList[cgroupJSON] `json:"cgroups"`
}

type cgroupJSON struct {
	Cgroup         string  `json:"cgroup"`
	Entries        uint64  `json:"entries"`
	Pinned         uint64  `json:"pinned"`
	Owned          uint64  `json:"owned"`
	MaxEntries     *uint64 `json:"max_entries"`
	MaxEntriesFrom *string `json:"max_entries_from"`
	MaxPinned      *uint64 `json:"max_pinned"`
	MaxPinnedFrom  *string `json:"max_pinned_from"`
}

func newStatusJSON(st *client.Status) statusJSON {
	out := statusJSON{
		Entries:        st.Entries,
		MaxEntries:     st.MaxEntries,
		OpenFDs:        st.OpenFDs,
		FDLimit:        st.FDLimit,
		WatchedCgroups: st.Watched,
		Containers:     st.Containers,
		Enforcement:    st.Enforcement,
		EnforcedBy:     st.EnforcedBy,
		InForce:        st.InForce,
		Lost:           st.Lost,
		Cgroups:        jsonList[cgroupJSON]{},
	}
	for _, n := range st.Nodes {
		c := cgroupJSON{Cgroup: n.Cgroup, Entries: n.Entries, Pinned: n.Pinned, Owned: n.Owned}
		// A source says where a limit comes from: none without a limit.
		if n.MaxEntries != nil {
			v := *n.MaxEntries
			c.MaxEntries, c.MaxEntriesFrom = &v, stringOrNull(n.EntriesSource)
		}
		if n.MaxPinned != nil {
			v := *n.MaxPinned
			c.MaxPinned, c.MaxPinnedFrom = &v, stringOrNull(n.PinnedSource)
		}
		out.Cgroups = append(out.Cgroups, c)
	}
	return out
}

// whoamiJSON is the output of capd whoami --json.
type whoamiJSON struct {
	Version  formatVersion `json:"version"`
	Identity string        `json:"identity"`
	Cgroup   string        `json:"cgroup"`
	UID      uint32        `json:"uid"`
	PID      uint32        `json:"pid"`
}

func newWhoamiJSON(id client.Identity) whoamiJSON {
	return whoamiJSON{Identity: id.Name, Cgroup: id.Cgroup, UID: id.UID, PID: id.PID}
}

// reloadJSON is the output of capd reload --json.
type reloadJSON struct {
	Version formatVersion    `json:"version"`
	Files   jsonList[string] `json:"files"`
	Grants  uint64           `json:"grants"`
	Quotas  uint64           `json:"quotas"`
}

func newReloadJSON(r *client.Reloaded) reloadJSON {
	return reloadJSON{Files: append(jsonList[string]{}, r.Files...), Grants: r.Grants, Quotas: r.Quotas}
}

// auditJSON is the output of capd audit --json.
type auditJSON struct {
	Version     formatVersion            `json:"version"`
	Time        jsonTime                 `json:"time"`
	PtraceScope *int                     `json:"ptrace_scope"`
	Processes   int                      `json:"processes"`
	FDs         int                      `json:"fds"`
	Entries     jsonList[auditEntryJSON] `json:"entries"`
	Removed     jsonList[auditEntryJSON] `json:"removed"`
}

type auditEntryJSON struct {
	Owner   string                    `json:"owner"`
	Name    string                    `json:"name"`
	Kind    string                    `json:"kind"`
	Removed *jsonTime                 `json:"removed"`
	Holders jsonList[auditHolderJSON] `json:"holders"`
}

type auditHolderJSON struct {
	PID        int              `json:"pid"`
	Identity   *string          `json:"identity"`
	Cgroup     *string          `json:"cgroup"`
	UID        *int             `json:"uid"`
	FD         int              `json:"fd"`
	Dumpable   *bool            `json:"dumpable"`
	ProcHidden bool             `json:"proc_hidden"`
	Exposed    bool             `json:"exposed"`
	Exposure   jsonList[string] `json:"exposure"`
}

func newAuditJSON(rep *client.AuditReport) auditJSON {
	out := auditJSON{
		Time:      jsonTime(rep.Time),
		Processes: rep.Processes,
		FDs:       rep.FDs,
		Entries:   auditEntriesJSON(rep.Entries),
		Removed:   auditEntriesJSON(rep.Removed),
	}
	if rep.PtraceScope >= 0 { // -1: no Yama
		v := rep.PtraceScope
		out.PtraceScope = &v
	}
	return out
}

func auditEntriesJSON(entries []client.AuditEntryReport) jsonList[auditEntryJSON] {
	out := jsonList[auditEntryJSON]{}
	for _, e := range entries {
		je := auditEntryJSON{Owner: e.Owner, Name: e.Name, Kind: e.Kind, Removed: timeOrNull(e.Removed), Holders: jsonList[auditHolderJSON]{}}
		for _, h := range e.Holders {
			jh := auditHolderJSON{
				PID:        h.PID,
				Identity:   stringOrNull(h.Identity),
				Cgroup:     stringOrNull(h.Cgroup),
				FD:         h.FD,
				ProcHidden: h.ProcHidden,
				Exposed:    h.Exposed,
				Exposure:   append(jsonList[string]{}, h.Exposure...),
			}
			if h.UID >= 0 { // -1: unknown
				uid := h.UID
				jh.UID = &uid
			}
			if h.Dumpable != nil {
				d := *h.Dumpable
				jh.Dumpable = &d
			}
			je.Holders = append(je.Holders, jh)
		}
		out = append(out, je)
	}
	return out
}

// versionJSON is the output of capd version --json. Its "version" is the
// format's, like every output's; the program's is "capd_version".
type versionJSON struct {
	Version     formatVersion `json:"version"`
	CapdVersion string        `json:"capd_version"`
	Revision    *string       `json:"revision"`
	Time        *jsonTime     `json:"time"`
	Modified    bool          `json:"modified"`
	Go          string        `json:"go"`
	Platform    string        `json:"platform"`
}

func newVersionJSON(b buildInfo) versionJSON {
	out := versionJSON{CapdVersion: b.Version, Revision: stringOrNull(b.Revision), Modified: b.Modified, Go: b.Go, Platform: b.Platform}
	if t, err := time.Parse(time.RFC3339, b.Time); err == nil {
		out.Time = timeOrNull(t)
	}
	return out
}

func (listJSON) jsonDoc()    {}
func (statusJSON) jsonDoc()  {}
func (whoamiJSON) jsonDoc()  {}
func (reloadJSON) jsonDoc()  {}
func (auditJSON) jsonDoc()   {}
func (versionJSON) jsonDoc() {}
