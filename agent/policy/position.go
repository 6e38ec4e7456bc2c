package policy

import (
	"fmt"
	"path"
	"strings"

	"github.com/BurntSushi/toml"
)

// positions knows where each key of a configuration file is: TOML's
// decoder reports positions only for syntax errors, and not per element of
// an array of tables, while every error and warning should name file,
// line and column. It reads the simple TOML capd's files use: [table] and
// [[array]] headers and key = value lines.
type positions struct {
	file   string
	tables map[string]pos   // "agent", "grant#2" (1-based) -> header
	keys   map[string]pos   // "agent.max_entries", "grant#2.consumer" -> key
	counts map[string]int   // array name -> elements seen
	first  map[string][]pos // "grant.acquire" -> every occurrence, in order
}

type pos struct{ line, col int }

func scanPositions(file string, data []byte) *positions {
	p := &positions{file: file, tables: map[string]pos{}, keys: map[string]pos{}, counts: map[string]int{}, first: map[string][]pos{}}
	table, plain := "", ""
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimRight(raw, "\r")
		trimmed := strings.TrimLeft(line, " \t")
		col := len(line) - len(trimmed) + 1
		switch {
		case strings.HasPrefix(trimmed, "[["):
			name := strings.TrimSpace(strings.Trim(strings.SplitN(trimmed[2:], "]]", 2)[0], " "))
			p.counts[name]++
			table = fmt.Sprintf("%s#%d", name, p.counts[name])
			plain = name
			p.tables[table] = pos{i + 1, col}
		case strings.HasPrefix(trimmed, "["):
			name := strings.TrimSpace(strings.SplitN(trimmed[1:], "]", 2)[0])
			table, plain = name, name
			p.tables[table] = pos{i + 1, col}
		case trimmed == "" || trimmed[0] == '#':
		default:
			k, _, ok := strings.Cut(trimmed, "=")
			if !ok {
				continue // a continued multi-line value
			}
			k = strings.Trim(strings.TrimSpace(k), `"'`)
			at := pos{i + 1, col}
			full := k
			if table != "" {
				full = table + "." + k
			}
			if _, dup := p.keys[full]; !dup {
				p.keys[full] = at
			}
			generic := k
			if plain != "" {
				generic = plain + "." + k
			}
			p.first[generic] = append(p.first[generic], at)
		}
	}
	return p
}

// at formats "FILE:LINE:COL" for a key ("agent.max_entries",
// "grant#2.consumer") or table ("grant#2"), "FILE" if unknown.
func (p *positions) at(key string) string {
	if q, ok := p.keys[key]; ok {
		return fmt.Sprintf("%s:%d:%d", p.file, q.line, q.col)
	}
	if q, ok := p.tables[key]; ok {
		return fmt.Sprintf("%s:%d:%d", p.file, q.line, q.col)
	}
	return p.file
}

// atGeneric formats the position of the first occurrence of a key given
// without its array index ("grant.acqiure", as the decoder reports it).
func (p *positions) atGeneric(key string) string {
	if qs := p.first[key]; len(qs) > 0 {
		return fmt.Sprintf("%s:%d:%d", p.file, qs[0].line, qs[0].col)
	}
	return p.file
}

// atKey formats the position of a key as the decoder gives it: a key =
// value line ("grant.acqiure") or a table header ("grnt"), "FILE" if
// unknown.
func (p *positions) atKey(k toml.Key) string {
	key := strings.Join(k, ".")
	if s := p.atGeneric(key); s != p.file {
		return s
	}
	if s := p.at(key); s != p.file {
		return s
	}
	return p.at(key + "#1")
}

// kinds are the prefixes identities carry; an identity without one is a
// unit name.
var kinds = []string{"container", "pod", "machine", "cgroup"}

// neverMatches says why identity pattern pat can match no identity, or "".
func neverMatches(pat string) string {
	kind, rest, prefixed := strings.Cut(string(pat), ":")
	if !prefixed {
		if strings.ContainsAny(pat, "*?[") {
			// A glob: it can match a unit unless it ends in a literal
			// that no .service or .scope name ends in.
			if i := strings.LastIndexAny(pat, "*?]"); i >= 0 && i < len(pat)-1 {
				tail := pat[i+1:]
				if !strings.HasSuffix(".service", tail) && !strings.HasSuffix(".scope", tail) && !strings.HasSuffix(tail, ".service") && !strings.HasSuffix(tail, ".scope") {
					return fmt.Sprintf("a pattern without a kind prefix matches unit names (NAME.service, NAME.scope), and no unit name ends in %q", tail)
				}
			}
			return ""
		}
		if !strings.HasSuffix(pat, ".service") && !strings.HasSuffix(pat, ".scope") {
			return fmt.Sprintf("%q is no identity: units are NAME.service or NAME.scope (did you mean %q?), others %s:…", pat, pat+".service", strings.Join(kinds, ":…, "))
		}
		return ""
	}
	ok := false
	for _, k := range kinds {
		if m, _ := path.Match(kind, k); m {
			ok = true
			if k == "cgroup" && !strings.ContainsAny(kind, "*?[") && rest != "" && rest[0] != '/' && !strings.ContainsAny(rest[:1], "*?[") {
				return fmt.Sprintf("cgroup identities are cgroup:/PATH; %q lacks the leading /", pat)
			}
		}
	}
	if !ok {
		return fmt.Sprintf("the kind %q is none of %s", kind, strings.Join(kinds, ", "))
	}
	return ""
}
