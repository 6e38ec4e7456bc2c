package tests

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestClientDoesNotImportAgent keeps the client library independent of the
// daemon, as DESIGN.md requires.
func TestClientDoesNotImportAgent(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "./client")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/capd-dev/capd/agent") {
			t.Errorf("client depends on %s", dep)
		}
	}
}

// TestOnePackageDoc: every package says what it owns, in exactly one place.
func TestOnePackageDoc(t *testing.T) {
	dirs := map[string]bool{}
	filepath.WalkDir("..", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			dirs[filepath.Dir(p)] = true
		}
		return nil
	})
	for dir := range dirs {
		pkgs, err := parser.ParseDir(token.NewFileSet(), dir, func(fi os.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			t.Fatal(err)
		}
		for name, pkg := range pkgs {
			var docs []string
			for fname, f := range pkg.Files {
				if f.Doc != nil {
					docs = append(docs, filepath.Base(fname))
				}
			}
			if len(docs) != 1 {
				t.Errorf("package %s in %s has %d package docs (%v), want 1", name, dir, len(docs), docs)
			}
		}
	}
}

// TestAgentLayers keeps the daemon's parts apart: nothing under
// agent/internal imports the agent that assembles them, and the store,
// the registry and audit import none of their siblings but the error type
// (persist saves the store's and the registry's state, so it may import
// those two), and metrics, the HTTP endpoint, imports none.
func TestAgentLayers(t *testing.T) {
	const base = "github.com/capd-dev/capd/agent"
	allowed := map[string][]string{
		"refusal":  nil,
		"store":    {"refusal"},
		"registry": {"refusal"},
		"audit":    nil,
		"persist":  {"store", "registry", "refusal"},
		"metrics":  nil,
	}
	for pkg, may := range allowed {
		cmd := exec.Command("go", "list", "-deps", "./agent/internal/"+pkg)
		cmd.Dir = ".."
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			switch rest, ok := strings.CutPrefix(dep, base+"/internal/"); {
			case dep == base:
				t.Errorf("agent/internal/%s imports the agent package", pkg)
			case ok && rest != pkg && !slices.Contains(may, rest):
				t.Errorf("agent/internal/%s imports its sibling %s", pkg, rest)
			}
		}
	}
}
