package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/capd-dev/capd/client"
)

// docKey is one row of a table of docs/JSON.md.
type docKey struct {
	typ      string // integer, string, boolean, time, array of strings, array of objects
	nullable bool
}

// readJSONDoc reads the tables of docs/JSON.md: for each command (a
// "## `capd CMD --json`" section) its keys, as jq paths, and their types.
func readJSONDoc(t *testing.T) (map[string]map[string]docKey, []string) {
	t.Helper()
	f, err := os.Open("../../docs/JSON.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	section := regexp.MustCompile("^## `capd ([a-z]+) --json`$")
	row := regexp.MustCompile("^\\| `(\\.[a-z_.\\[\\]]+)` \\| ([a-z ]+) \\| .+ \\|$")
	docs := map[string]map[string]docKey{}
	var order []string
	cmd := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := section.FindStringSubmatch(line); m != nil {
			cmd = m[1]
			if docs[cmd] != nil {
				t.Fatalf("docs/JSON.md: two sections for %s", cmd)
			}
			docs[cmd] = map[string]docKey{}
			order = append(order, cmd)
			continue
		}
		if strings.HasPrefix(line, "## ") {
			cmd = ""
		}
		if cmd == "" || !strings.HasPrefix(line, "| `") {
			continue
		}
		m := row.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("docs/JSON.md: cannot read the row %q", line)
		}
		typ, nullable := strings.CutSuffix(m[2], " or null")
		switch typ {
		case "integer", "string", "boolean", "time", "array of strings", "array of objects":
		default:
			t.Fatalf("docs/JSON.md: %s %s: unknown type %q", cmd, m[1], m[2])
		}
		if _, dup := docs[cmd][m[1]]; dup {
			t.Fatalf("docs/JSON.md: %s documents %s twice", cmd, m[1])
		}
		docs[cmd][m[1]] = docKey{typ, nullable}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return docs, order
}

// jsonValues maps every path in v (jq syntax: .a[].b) to its values.
func jsonValues(path string, v any, out map[string][]any) {
	out[path] = append(out[path], v)
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			jsonValues(path+"."+k, x, out)
		}
	case []any:
		for _, x := range v {
			jsonValues(path+"[]", x, out)
		}
	}
}

var jsonTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// hasType reports whether v, decoded with UseNumber, is of the documented
// type.
func hasType(v any, k docKey) bool {
	if v == nil {
		return k.nullable
	}
	switch k.typ {
	case "integer":
		n, ok := v.(json.Number)
		return ok && !strings.ContainsAny(string(n), ".eE")
	case "string":
		_, ok := v.(string)
		return ok
	case "time":
		s, ok := v.(string)
		return ok && jsonTimeRE.MatchString(s)
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "array of strings":
		a, ok := v.([]any)
		for _, x := range a {
			if _, isString := x.(string); !isString {
				return false
			}
		}
		return ok
	case "array of objects":
		a, ok := v.([]any)
		for _, x := range a {
			if _, isObject := x.(map[string]any); !isObject {
				return false
			}
		}
		return ok
	}
	return false
}

func ptr[T any](v T) *T { return &v }

// jsonCases are, for each command, values of its output: zero ones (every
// list empty, every pointer nil) and filled ones, whose lists hold one
// element or more, among them a zero one, so that together they have every
// documented key, and each key is seen with a zero value.
func jsonCases() map[string][]jsonDoc {
	t0 := time.Date(2025, 1, 31, 9, 30, 0, 250e6, time.FixedZone("CET", 3600))
	dumpable := true
	return map[string][]jsonDoc{
		"list": {
			listJSON{},
			newListJSON(nil),
			newListJSON([]client.Entry{
				{},
				{Owner: "rpm-ostreed.service", Name: "zincati-fd", Kind: "memfd", Cgroup: "/system.slice/rpm-ostreed.service", Published: t0},
				{Owner: "cgroup:/a\x1b", Name: "b", Pinned: true, Kind: "socket", Cgroup: "/a\x1b", Published: t0, Expires: t0.Add(time.Hour), Acquired: 3, Allow: []string{"zincati.service", "container:*"}},
				{Owner: "a.service", Name: "dir", Kind: "dir", Cgroup: "/a.service", Published: t0, Restrict: []string{"per-consumer", "read-only"}, Enforcement: "enforced", Grants: []client.Grant{
					{ID: "g2", Grantee: "b.service", UID: 0, Depth: 1, Restrict: []string{"per-consumer", "read-only"}, Acquired: 1, Made: t0},
					{ID: "g3", Grantee: "container:c", UID: ^uint32(0), Parent: "g2", Depth: 2, Restrict: []string{"per-consumer", "read-only", "noexec"}, Made: t0, Expires: t0.Add(time.Minute)},
				}},
			}),
		},
		"status": {
			statusJSON{},
			newStatusJSON(&client.Status{}),
			newStatusJSON(&client.Status{Entries: 3, MaxEntries: 8192, OpenFDs: 20, FDLimit: 65536, Watched: 2, Containers: 1, Nodes: []client.Node{
				{},
				{Cgroup: "/", Entries: 3, Pinned: 1, MaxEntries: ptr[uint64](8192), EntriesSource: "max_entries"},
				{Cgroup: "/system.slice", Entries: 3, Pinned: 1, Owned: 2, MaxEntries: ptr[uint64](4096), EntriesSource: "quota cgroup=/system.slice", MaxPinned: ptr[uint64](0), PinnedSource: "quota cgroup=/system.slice"},
			}}),
		},
		"whoami": {
			whoamiJSON{},
			newWhoamiJSON(client.Identity{}),
			newWhoamiJSON(client.Identity{Name: "zincati.service", Cgroup: "/system.slice/zincati.service", UID: 65534, PID: 4321}),
		},
		"reload": {
			reloadJSON{},
			newReloadJSON(&client.Reloaded{}),
			newReloadJSON(&client.Reloaded{Files: []string{"/etc/capd/capd.toml", "/etc/capd/conf.d/a.toml"}, Grants: 4, Quotas: 1}),
		},
		"audit": {
			auditJSON{},
			newAuditJSON(&client.AuditReport{PtraceScope: -1}),
			newAuditJSON(&client.AuditReport{
				Time: t0, PtraceScope: 1, Processes: 200, FDs: 3000,
				Entries: []client.AuditEntryReport{
					{Owner: "rpm-ostreed.service", Name: "zincati-fd", Kind: "memfd", Holders: []client.AuditHolderReport{
						{PID: 10, Identity: "zincati.service", Cgroup: "/system.slice/zincati.service", UID: 65534, FD: 3, Dumpable: &dumpable, Exposed: true, Exposure: []string{"dumpable"}},
						{PID: 11, Identity: "", UID: -1, FD: 4},
						{PID: 12, Identity: "init.scope", Cgroup: "/init.scope", UID: 0, FD: 5},
					}},
					{Owner: "a.service", Name: "alone", Kind: "pipe"},
					{Holders: []client.AuditHolderReport{{}}},
				},
				Removed: []client.AuditEntryReport{
					{Holders: []client.AuditHolderReport{{}}},
					{Owner: "a.service", Name: "gone", Kind: "file", Removed: t0, Holders: []client.AuditHolderReport{
						{PID: 13, Identity: "b.service", Cgroup: "/system.slice/b.service", UID: 1000, FD: 7, Dumpable: ptr(false), ProcHidden: true, Exposure: []string{"non-dumpable"}},
					}},
				},
			}),
		},
		"version": {
			versionJSON{},
			newVersionJSON(buildInfo{}),
			newVersionJSON(readBuildInfo()),
			newVersionJSON(buildInfo{Version: "v1.2.3", Revision: "0123456789abcdef0123456789abcdef01234567", Time: "2025-01-31T09:30:00Z", Modified: true, Go: "go1.26.8", Platform: "linux/amd64"}),
		},
	}
}

// Every --json output is an object whose first key is "version": 1, with
// every key of docs/JSON.md, of the type it says, and no other.
func TestJSONMatchesDocs(t *testing.T) {
	docs, order := readJSONDoc(t)
	cases := jsonCases()
	if got, want := slices.Sorted(maps.Keys(cases)), slices.Sorted(slices.Values(order)); !slices.Equal(got, want) {
		t.Fatalf("docs/JSON.md documents %v, the test has %v", want, got)
	}
	for _, cmd := range order {
		keys := docs[cmd]
		if k := keys[".version"]; k.typ != "integer" || k.nullable {
			t.Errorf("docs/JSON.md: %s: .version is not an integer", cmd)
		}
		seen := map[string]bool{}
		for i, v := range cases[cmd] {
			var buf bytes.Buffer
			if err := printJSON(&buf, v); err != nil {
				t.Fatalf("%s #%d: %v", cmd, i, err)
			}
			out := buf.String()
			// "version" first, and 1.
			dec := json.NewDecoder(strings.NewReader(out))
			dec.UseNumber()
			if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
				t.Fatalf("%s #%d: not an object: %s", cmd, i, out)
			}
			if k, err := dec.Token(); err != nil || k != "version" {
				t.Errorf("%s #%d: the first key is %v, not version: %s", cmd, i, k, out)
			}
			if n, err := dec.Token(); err != nil || n != json.Number("1") {
				t.Errorf("%s #%d: version %v, want 1: %s", cmd, i, n, out)
			}
			var doc any
			dec = json.NewDecoder(strings.NewReader(out))
			dec.UseNumber()
			if err := dec.Decode(&doc); err != nil {
				t.Fatal(err)
			}
			vals := map[string][]any{}
			jsonValues("", doc, vals)
			for p, vs := range vals {
				if p == "" || strings.HasSuffix(p, "[]") {
					continue // the root, or elements: their list's type covers them
				}
				seen[p] = true
				k, ok := keys[p]
				if !ok {
					t.Errorf("%s #%d: %s is not in docs/JSON.md: %s", cmd, i, p, out)
					continue
				}
				for _, x := range vs {
					if !hasType(x, k) {
						t.Errorf("%s #%d: %s = %v, not %s (nullable %v)", cmd, i, p, x, k.typ, k.nullable)
					}
				}
			}
			// Every object has every documented key.
			for p, vs := range vals {
				for _, x := range vs {
					obj, ok := x.(map[string]any)
					if !ok {
						continue
					}
					for k := range keys {
						if parent, name := splitKey(k); parent == p {
							if _, ok := obj[name]; !ok {
								t.Errorf("%s #%d: %s is missing: %s", cmd, i, k, out)
							}
						}
					}
				}
			}
		}
		for p := range keys {
			if !seen[p] {
				t.Errorf("%s: no test value has %s: fill one", cmd, p)
			}
		}
	}
}

// splitKey splits .a[].b into the path of its object, .a[], and its name, b.
func splitKey(p string) (parent, name string) {
	i := strings.LastIndexByte(p, '.')
	return p[:i], p[i+1:]
}

// Absent values are explicit: null for a missing time, limit or string,
// [] for an empty list.
func TestJSONNulls(t *testing.T) {
	for _, tc := range []struct {
		v    jsonDoc
		want string
	}{
		{listJSON{}, `{"version":1,"entries":[]}`},
		{newListJSON([]client.Entry{{Owner: "o", Name: "n", Kind: "file", Cgroup: "/o", Published: time.UnixMilli(1738315800250)}}),
			`{"version":1,"entries":[{"owner":"o","name":"n","kind":"file","pinned":false,"cgroup":"/o","published":"2025-01-31T09:30:00.250Z","expires":null,"acquired":0,"allow":[],"restrict":[],"enforcement":"","grants":[]}]}`},
		{newListJSON([]client.Entry{{Owner: "o", Name: "n", Kind: "memfd", Cgroup: "/o", Published: time.UnixMilli(1738315800250), Restrict: []string{"per-consumer"}, Enforcement: "advisory",
			Grants: []client.Grant{{ID: "g2", Grantee: "a.service", UID: ^uint32(0), Depth: 2, Made: time.UnixMilli(1738315800250)}}}}),
			`{"version":1,"entries":[{"owner":"o","name":"n","kind":"memfd","pinned":false,"cgroup":"/o","published":"2025-01-31T09:30:00.250Z","expires":null,"acquired":0,"allow":[],"restrict":["per-consumer"],"enforcement":"advisory","grants":[{"id":"g2","grantee":"a.service","uid":null,"parent":null,"depth":2,"restrict":[],"acquired":0,"made":"2025-01-31T09:30:00.250Z","expires":null}]}]}`},
		{newStatusJSON(&client.Status{Nodes: []client.Node{{Cgroup: "/"}}}),
			`{"version":1,"entries":0,"max_entries":0,"open_fds":0,"fd_limit":0,"watched_cgroups":0,"containers":0,"enforcement":"","enforced_by":"","in_force":0,"lost_revocations":0,"cgroups":[{"cgroup":"/","entries":0,"pinned":0,"owned":0,"max_entries":null,"max_entries_from":null,"max_pinned":null,"max_pinned_from":null}]}`},
		{whoamiJSON{}, `{"version":1,"identity":"","cgroup":"","uid":0,"pid":0}`},
		{reloadJSON{}, `{"version":1,"files":[],"grants":0,"quotas":0}`},
		{newAuditJSON(&client.AuditReport{PtraceScope: -1, Entries: []client.AuditEntryReport{{Owner: "o", Name: "n", Kind: "file", Holders: []client.AuditHolderReport{{PID: 1, UID: -1}}}}}),
			`{"version":1,"time":"0001-01-01T00:00:00.000Z","ptrace_scope":null,"processes":0,"fds":0,"entries":[{"owner":"o","name":"n","kind":"file","removed":null,"holders":[{"pid":1,"identity":null,"cgroup":null,"uid":null,"fd":0,"dumpable":null,"proc_hidden":false,"exposed":false,"exposure":[]}]}],"removed":[]}`},
		{newVersionJSON(buildInfo{Version: "(devel)", Go: "go1.26.8", Platform: "linux/amd64"}),
			`{"version":1,"capd_version":"(devel)","revision":null,"time":null,"modified":false,"go":"go1.26.8","platform":"linux/amd64"}`},
	} {
		got, err := json.Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

// Each command with --json says in its --help where the format is
// documented.
func TestJSONHelpPointsToDocs(t *testing.T) {
	_, order := readJSONDoc(t)
	for _, cmd := range order {
		var out bytes.Buffer
		if code := run(context.Background(), []string{cmd, "--help"}, &out, &out); code != 0 {
			t.Fatalf("capd %s --help: exit %d: %s", cmd, code, out.String())
		}
		if s := out.String(); !strings.Contains(s, "--json") || !strings.Contains(s, "docs/JSON.md") {
			t.Errorf("capd %s --help does not point --json to docs/JSON.md:\n%s", cmd, s)
		}
	}
}
