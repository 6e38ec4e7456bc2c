package tests

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// forbiddenDeps are packages a binary must not link, with why, by the
// binary's package.
var forbiddenDeps = map[string]map[string]string{
	"github.com/capd-dev/capd/cmd/capd-full": fullForbidden,
	// capd starts in front of every workload and runs in every container
	// hook: it links only what acquire, publish, hook and whoami use.
	"github.com/capd-dev/capd/cmd/capd": merge(fullForbidden, map[string]string{
		"github.com/spf13/cobra":                 "cobra and its text/template are capd-full's: capd parses its start-up commands with pflag",
		"text/template":                          "text/template (cobra's help) keeps every exported method of every linked type alive: a larger binary to page in at each start",
		"github.com/capd-dev/capd/agent":         "the agent is capd-full's",
		"github.com/godbus/dbus/v5":              "D-Bus is the agent's",
		"github.com/BurntSushi/toml":             "the policy file is the agent's",
		"github.com/spf13/cobra/doc":             "the man page generator is capd-full's",
		"github.com/capd-dev/capd/cmd/capd-full": "capd executes capd-full, it does not link it",
	}),
}

var fullForbidden = map[string]string{
	"github.com/containerd/cgroups/v3/cgroup2": "the agent reads cgroups itself (package cgroup); cgroup2 is for tests",
	"crypto/tls":                        "capd speaks only AF_UNIX: TLS is code the host agent does not need",
	"net/http":                          "capd neither serves nor fetches HTTP",
	"github.com/containerd/nri/pkg/api": "the NRI plugin is the capd-nri binary: NRI's protobuf and ttrpc initialisation would cost every capd start",
}

func merge(a, b map[string]string) map[string]string {
	m := maps.Clone(a)
	maps.Copy(m, b)
	return m
}

// moduleRoot is the directory of go.mod, the parent of tests/.
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return root
}

// goCmd runs the go command in the module root and returns its stdout.
func goCmd(t *testing.T, env []string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleRoot(t)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && stderr.Len() > 0 {
		t.Logf("go %s: %s", strings.Join(args, " "), stderr.Bytes())
	}
	return out, err
}

// importChain returns the shortest import chain from root to pkg in graph
// (package -> its imports), nil if pkg is not reached.
func importChain(graph map[string][]string, root, pkg string) []string {
	from := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == pkg {
			var chain []string
			for ; p != ""; p = from[p] {
				chain = append(chain, p)
			}
			slices.Reverse(chain)
			return chain
		}
		for _, imp := range graph[p] {
			if _, seen := from[imp]; !seen {
				from[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	return nil
}

func TestImportChain(t *testing.T) {
	g := map[string][]string{"a": {"b", "c"}, "b": {"d"}, "c": {"d", "e"}, "e": {"a"}}
	for _, tc := range []struct {
		pkg  string
		want []string
	}{{"a", []string{"a"}}, {"d", []string{"a", "b", "d"}}, {"e", []string{"a", "c", "e"}}, {"f", nil}} {
		if got := importChain(g, "a", tc.pkg); !slices.Equal(got, tc.want) {
			t.Errorf("importChain(a, %s) = %q, want %q", tc.pkg, got, tc.want)
		}
	}
}

// TestBinaryDeps fails if capd or capd-full links a package it should
// not, naming the import chain that pulls it in. Both cgo settings count:
// a build may use either.
func TestBinaryDeps(t *testing.T) {
	for _, bin := range slices.Sorted(maps.Keys(forbiddenDeps)) {
		forbidden := forbiddenDeps[bin]
		chains := map[string][]string{} // "pkg: chain" -> cgo settings
		for _, cgo := range []string{"0", "1"} {
			out, err := goCmd(t, []string{"CGO_ENABLED=" + cgo}, "list", "-deps", "-f", `{{.ImportPath}} {{join .Imports " "}}`, bin)
			if err != nil {
				t.Fatalf("go list -deps %s (CGO_ENABLED=%s): %v", bin, cgo, err)
			}
			graph := map[string][]string{}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(line)
				if len(f) > 0 {
					graph[f[0]] = f[1:]
				}
			}
			if _, ok := graph[bin]; !ok {
				t.Fatalf("go list -deps %s does not list it:\n%s", bin, out)
			}
			for pkg := range forbidden {
				if chain := importChain(graph, bin, pkg); chain != nil {
					k := pkg + ": " + strings.Join(chain, " -> ")
					chains[k] = append(chains[k], "CGO_ENABLED="+cgo)
				}
			}
		}
		for _, k := range slices.Sorted(maps.Keys(chains)) {
			pkg, chain, _ := strings.Cut(k, ": ")
			t.Errorf("%s links %s (%s), with %s, through\n\t%s", path.Base(bin), pkg, forbidden[pkg], strings.Join(chains[k], " and "), chain)
		}
	}
}

// TestModTidy fails if 'go mod tidy' would change go.mod or go.sum.
func TestModTidy(t *testing.T) {
	out, err := goCmd(t, nil, "mod", "tidy", "-diff")
	switch {
	case err != nil && len(out) > 0:
		t.Errorf("go.mod and go.sum are not tidy; run 'go mod tidy', which would change:\n%s", out)
	case err != nil:
		t.Fatalf("go mod tidy -diff: %v", err)
	}
}
