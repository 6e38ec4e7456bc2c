package policy

import (
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var configSeeds = []string{
	"",
	"[agent]\nidle_timeout = \"5s\"\nsend_timeout = \"1m\"\nmax_entries = 10\nmax_connections = 3\nmax_connections_per_uid = 1\ndefault_max_entries = 2\ndefault_max_pinned = 1\nmax_entries_per_uid = 4\nmax_pinned_per_uid = 2\n",
	"[[grant]]\nconsumer = \"zincati.service\"\nacquire  = [\"rpm-ostreed.service:zincati-fd\", \"rpm-ostreed.service:foo-op-fd\"]\n\n[[grant]]\nconsumer = \"container:web-*\"\nacquire  = [\"cgroup:/machine/db:sock-*\"]\nallow_kinds = [\"dir\", \"path\"]\n",
	"[[grant]]\nconsumer = \"zincati\"\nacquire  = [\"container:*:x\", \"cgroup:machine.slice/x:y\", \"box:web:z\", \"*.slice:q\", \"rpm-ostreed:zincati-fd\"]\n",
	"[[quota]]\ncgroup = \"/system.slice\"\nmax_pinned = 1024\nmax_entries = 4096\n\n[[quota]]\nunit = \"rpm-ostreed.service\"\nmax_pinned = 16\n",
	"[[grant]]\nconsumer = \"a.service\"\nacquire = [\"a.service:[!x]\"]\n",
	"[[grant]]\nconsumer = \"a.service\"\nacqiure = [\"a.service:x\"]\n",
	"[agent]\n\n  max_connections = 0\n",
	"[agent]\nmax_entries = \"x\"\n",
	"grant = [{consumer = \"a.service\", acquire = [\"b.service:x\"]}]\n",
	"[[grant]\n",
	"[metrics]\nsocket = \"/run/capd/metrics.sock\"\nlisten = \"127.0.0.1:9417\"\n",
	"[metrics]\nlisten = \"0.0.0.0:9417\"\n",
	"[metrics]\nlisten = \"[::]:9417\"\nallow_remote = true\n",
}

// FuzzLoad loads arbitrary bytes as a configuration file. A refusal names
// the file first (and a line the file has); a configuration that loads is
// complete (defaults set, every grant with a valid consumer and entries),
// warns only with the file's name in front, loads the same again, and
// grants what each of its literal grants says.
func FuzzLoad(f *testing.F) {
	for _, s := range configSeeds {
		f.Add([]byte(s))
	}
	// Rewriting a file on disk for every input would cost most of the
	// time: use tmpfs where there is one.
	dir := f.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "capd-fuzz"); err == nil {
		dir = d
		f.Cleanup(func() { os.RemoveAll(d) })
	}
	file := filepath.Join(dir, "capd.toml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := Load(file, false)
		if err != nil {
			if c != nil {
				t.Fatalf("Load returned a config and %v", err)
			}
			checkErrorPosition(t, file, data, err.Error())
			return
		}
		checkConfig(t, file, data, c)
	})
}

// checkErrorPosition checks that msg starts with file, and with a line and
// column that exist if it gives them.
func checkErrorPosition(t *testing.T, file string, data []byte, msg string) {
	t.Helper()
	rest, ok := strings.CutPrefix(msg, file)
	if !ok {
		t.Fatalf("error %q does not start with the file name %s", msg, file)
	}
	rest, ok = strings.CutPrefix(rest, ":")
	if !ok {
		t.Fatalf("error %q: no ':' after the file name", msg)
	}
	line, rest, _ := strings.Cut(rest, ":")
	n, err := strconv.Atoi(line)
	if err != nil {
		return // FILE: message
	}
	col, _, _ := strings.Cut(rest, ":")
	c, err := strconv.Atoi(col)
	if lines := strings.Count(string(data), "\n") + 1; n < 1 || n > lines || err != nil || c < 1 {
		t.Fatalf("error %q: line %d, column %q of a file of %d lines", msg, n, col, lines)
	}
}

func checkConfig(t *testing.T, file string, data []byte, c *Config) {
	t.Helper()
	if !slices.Equal(c.Files, []string{file}) {
		t.Fatalf("Files = %q, want %s", c.Files, file)
	}
	a := c.Agent
	for _, v := range []int{a.MaxConnections, a.MaxConnectionsPerUID, a.MaxEntries, a.DefaultMaxEntries, a.DefaultMaxPinned, a.MaxEntriesPerUID, a.MaxPinnedPerUID} {
		if v <= 0 {
			t.Fatalf("agent settings not all positive: %+v", a)
		}
	}
	if a.IdleTimeout <= 0 || a.SendTimeout <= 0 {
		t.Fatalf("agent timeouts not positive: %+v", a)
	}
	for _, w := range c.Warnings {
		if !strings.HasPrefix(w, file+":") {
			t.Fatalf("warning %q does not start with %s:", w, file)
		}
	}
	for i, g := range c.Grants {
		if g.Consumer == "" || ValidPattern(string(g.Consumer)) != nil || len(g.Acquire) == 0 {
			t.Fatalf("grant #%d: %+v", i+1, g)
		}
		for _, k := range g.AllowKinds {
			if !slices.Contains(unconfinedKinds, k) {
				t.Fatalf("grant #%d: allow_kinds %q", i+1, g.AllowKinds)
			}
		}
		for _, r := range g.Acquire {
			var again EntryRef
			if ValidPattern(string(r.Owner)) != nil || r.Name == "" || strings.Contains(r.Name, ":") || again.UnmarshalText([]byte(r.String())) != nil || again != r {
				t.Fatalf("grant #%d: entry %q (%#v) does not read back (%#v)", i+1, r, r, again)
			}
			// A grant of literal names grants them.
			if literal(string(g.Consumer)) && literal(string(r.Owner)) && literal(r.Name) {
				who := &Caller{Identity: string(g.Consumer), UID: 1000, HostNamespaces: true}
				if d := c.Authorize(who, Acquire, &Target{Owner: string(r.Owner), Name: r.Name, Kind: "memfd"}); !d.Allowed {
					t.Fatalf("grant #%d lets %s acquire %s, yet: %s", i+1, g.Consumer, r, d.Reason)
				}
			}
		}
	}
	for i, q := range c.Quotas {
		if (q.Cgroup == "") == (q.Unit == "") || q.MaxEntries == nil && q.MaxPinned == nil {
			t.Fatalf("quota #%d: %+v", i+1, q)
		}
		p := q.Cgroup
		if p == "" {
			p = "/x.slice/" + q.Unit
		}
		l := c.NodeLimits(p, true)
		if q.MaxEntries != nil && (l.MaxEntries < 0 || l.MaxEntries > *q.MaxEntries) || q.MaxPinned != nil && (l.MaxPinned < 0 || l.MaxPinned > *q.MaxPinned) {
			t.Fatalf("quota #%d %+v: NodeLimits(%s) = %+v, looser", i+1, q, p, l)
		}
	}
	again, err := Load(file, false)
	if err != nil || !reflect.DeepEqual(again, c) {
		t.Fatalf("loading %q again gave %+v, %v; first %+v", data, again, err, c)
	}
}

// literal reports whether a pattern has no glob or escape characters.
func literal(s string) bool { return !strings.ContainsAny(s, `*?[]\`) }

// FuzzPattern matches arbitrary identities against arbitrary patterns.
// Valid patterns match part by part: a match has as many ':' in the
// identity as in the pattern, as many '/' where the pattern has no class
// (no '*' or '?' reaches across either), and a pattern without glob
// characters matches only itself. Entry references read back to what was
// read.
func FuzzPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"*.service", "a.service"}, {"*.service", "container:x.service"}, {"*", "container:x"},
		{"cgroup:/machine.slice/*", "cgroup:/machine.slice/a/b"}, {"cgroup:/machine.slice/*", "cgroup:/machine.slice/a"},
		{"container:web-?", "container:web-1"}, {"container:[^a]*", "container:b:c"}, {"[a-z]*:x", "abc:x"},
		{`a\*`, "a*"}, {"[!a]", "b"}, {"[", ""}, {"a:", "a:"}, {"cgroup:/a/[/]", "cgroup:/a//"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, identity string) {
		var p Pattern
		verr := ValidPattern(pattern)
		uerr := p.UnmarshalText([]byte(pattern))
		if (verr == nil) != (uerr == nil) || uerr == nil && string(p) != pattern {
			t.Fatalf("ValidPattern(%q) = %v, UnmarshalText = %v, %q", pattern, verr, uerr, p)
		}
		var r EntryRef
		if err := r.UnmarshalText([]byte(pattern)); err == nil {
			if r.String() != pattern || ValidPattern(string(r.Owner)) != nil || strings.Contains(r.Name, ":") || r.Name == "" {
				t.Fatalf("entry %q read as %#v", pattern, r)
			}
			if o, n, _ := strings.Cut(identity, "\x00"); r.Match(o, n) && !Pattern(r.Owner).Match(o) {
				t.Fatalf("entry %q matches %q:%q, its owner does not", pattern, o, n)
			}
		}
		if verr != nil {
			return
		}
		m := Pattern(pattern).Match(identity)
		if literal(pattern) && m != (identity == pattern) {
			t.Fatalf("literal pattern %q: Match(%q) = %v", pattern, identity, m)
		}
		if !m {
			return
		}
		if strings.Count(identity, ":") != strings.Count(pattern, ":") {
			t.Fatalf("%q matches %q across a ':'", pattern, identity)
		}
		if !strings.Contains(pattern, "[") && strings.Count(identity, "/") != strings.Count(pattern, "/") {
			t.Fatalf("%q matches %q across a '/'", pattern, identity)
		}
		ps, is := strings.Split(pattern, ":"), strings.Split(identity, ":")
		for i := range ps {
			if ok, err := path.Match(ps[i], is[i]); !ok || err != nil {
				t.Fatalf("%q matches %q, yet part %q does not match %q (%v)", pattern, identity, ps[i], is[i], err)
			}
		}
	})
}
