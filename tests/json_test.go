package tests

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// The --json outputs of capd as docs/JSON.md documents them (format
// version 1), decoded by the tests that read them. They are the tests' own,
// not the client's types: the CLI's contract is what is tested.

type cliList struct {
	Entries []cliEntry `json:"entries"`
}

type cliEntry struct {
	Owner     string     `json:"owner"`
	Name      string     `json:"name"`
	Kind      string     `json:"kind"`
	Pinned    bool       `json:"pinned"`
	Cgroup    string     `json:"cgroup"`
	Published time.Time  `json:"published"`
	Expires   *time.Time `json:"expires"`
	Acquired  uint64     `json:"acquired"`
	Allow     []string   `json:"allow"`
}

type cliStatus struct {
	Entries        uint64      `json:"entries"`
	MaxEntries     uint64      `json:"max_entries"`
	OpenFDs        uint64      `json:"open_fds"`
	FDLimit        uint64      `json:"fd_limit"`
	WatchedCgroups uint64      `json:"watched_cgroups"`
	Containers     uint64      `json:"containers"`
	Cgroups        []cliCgroup `json:"cgroups"`
}

type cliCgroup struct {
	Cgroup         string  `json:"cgroup"`
	Entries        uint64  `json:"entries"`
	Pinned         uint64  `json:"pinned"`
	Owned          uint64  `json:"owned"`
	MaxEntries     *uint64 `json:"max_entries"`
	MaxEntriesFrom *string `json:"max_entries_from"`
	MaxPinned      *uint64 `json:"max_pinned"`
	MaxPinnedFrom  *string `json:"max_pinned_from"`
}

type cliWhoami struct {
	Identity string `json:"identity"`
	Cgroup   string `json:"cgroup"`
	UID      uint32 `json:"uid"`
	PID      uint32 `json:"pid"`
}

type cliAudit struct {
	Time        time.Time       `json:"time"`
	PtraceScope *int            `json:"ptrace_scope"`
	Processes   int             `json:"processes"`
	FDs         int             `json:"fds"`
	Entries     []cliAuditEntry `json:"entries"`
	Removed     []cliAuditEntry `json:"removed"`
}

type cliAuditEntry struct {
	Owner   string           `json:"owner"`
	Name    string           `json:"name"`
	Kind    string           `json:"kind"`
	Removed *time.Time       `json:"removed"`
	Holders []cliAuditHolder `json:"holders"`
}

type cliAuditHolder struct {
	PID        int      `json:"pid"`
	Identity   *string  `json:"identity"`
	Cgroup     *string  `json:"cgroup"`
	UID        *int     `json:"uid"`
	FD         int      `json:"fd"`
	Dumpable   *bool    `json:"dumpable"`
	ProcHidden bool     `json:"proc_hidden"`
	Exposed    bool     `json:"exposed"`
	Exposure   []string `json:"exposure"`
}

// is reports whether the holder's identity is id and its uid uid.
func (h cliAuditHolder) is(id string, uid int) bool {
	return h.Identity != nil && *h.Identity == id && h.UID != nil && *h.UID == uid
}

type cliVersion struct {
	CapdVersion string  `json:"capd_version"`
	Revision    *string `json:"revision"`
	Time        *string `json:"time"`
	Modified    bool    `json:"modified"`
	Go          string  `json:"go"`
	Platform    string  `json:"platform"`
}

// parseJSON decodes the --json output out into v, after checking that it
// is an object whose first key is "version", 1.
func parseJSON(t testing.TB, out string, v any) {
	t.Helper()
	if err := parseJSONErr(out, v); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
}

func parseJSONErr(out string, v any) error {
	dec := json.NewDecoder(strings.NewReader(out))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("--json output: not a JSON object")
	}
	if k, err := dec.Token(); err != nil || k != "version" {
		return errors.New(`--json output: the first key is not "version"`)
	}
	if n, err := dec.Token(); err != nil || n != json.Number("1") {
		return errors.New(`--json output: "version" is not 1`)
	}
	return json.Unmarshal([]byte(out), v)
}
