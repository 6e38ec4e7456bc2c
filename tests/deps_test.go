package tests

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// capdPkg is the package of the capd binary.
const capdPkg = "github.com/capd-dev/capd/cmd/capd"

// forbiddenDeps are packages the capd binary must not link, with why.
var forbiddenDeps = map[string]string{
	"github.com/containerd/cgroups/v3/cgroup2": "the agent reads cgroups itself (package cgroup); cgroup2 is for tests",
	"crypto/tls":                        "capd speaks only AF_UNIX: TLS is code the host agent does not need",
	"net/http":                          "capd neither serves nor fetches HTTP",
	"github.com/containerd/nri/pkg/api": "the NRI plugin is the capd-nri binary: NRI's protobuf and ttrpc initialisation would cost every capd start",
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

// TestBinaryDeps fails if the capd binary links a package it should not,
// naming the import chain that pulls it in. Both cgo settings count: the
// Makefile builds with the default, the tests with CGO_ENABLED=0.
func TestBinaryDeps(t *testing.T) {
	chains := map[string][]string{} // "pkg: chain" -> cgo settings
	for _, cgo := range []string{"0", "1"} {
		out, err := goCmd(t, []string{"CGO_ENABLED=" + cgo}, "list", "-deps", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./cmd/capd")
		if err != nil {
			t.Fatalf("go list -deps ./cmd/capd (CGO_ENABLED=%s): %v", cgo, err)
		}
		graph := map[string][]string{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			if len(f) > 0 {
				graph[f[0]] = f[1:]
			}
		}
		if _, ok := graph[capdPkg]; !ok {
			t.Fatalf("go list -deps ./cmd/capd does not list %s:\n%s", capdPkg, out)
		}
		for pkg := range forbiddenDeps {
			if chain := importChain(graph, capdPkg, pkg); chain != nil {
				k := pkg + ": " + strings.Join(chain, " -> ")
				chains[k] = append(chains[k], "CGO_ENABLED="+cgo)
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(chains)) {
		pkg, chain, _ := strings.Cut(k, ": ")
		t.Errorf("capd links %s (%s), with %s, through\n\t%s", pkg, forbiddenDeps[pkg], strings.Join(chains[k], " and "), chain)
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
