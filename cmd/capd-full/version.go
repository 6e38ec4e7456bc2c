package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// Set with -ldflags -X by the Makefile, from git, for builds the go command
// cannot stamp: it finds no repository in a linked git worktree (whose .git
// is a file), and builds with -buildvcs=false there. The build information
// the go command records wins wherever it has a value.
var (
	stampVersion  string // a module version: vX.Y.Z or a pseudo-version
	stampRevision string
	stampTime     string // RFC 3339, UTC
	stampModified string // "true" or "false"
)

// buildInfo is what this binary knows about how it was built.
// capd version --json prints it as a versionJSON.
type buildInfo struct {
	Version  string // main module version, "(devel)" if unknown
	Revision string // VCS commit
	Time     string // commit time
	Modified bool   // built from a tree with uncommitted changes
	Go       string // toolchain version
	Platform string // GOOS/GOARCH
}

// readBuildInfo takes the main module version, the VCS settings and the Go
// version from runtime/debug.ReadBuildInfo, and the Makefile's stamps where
// those are missing.
func readBuildInfo() buildInfo {
	b := buildInfo{Version: "(devel)", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	vcs := false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" {
			b.Version = v
		}
		b.Go = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision, vcs = s.Value, true
			case "vcs.time":
				b.Time = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "(devel)" && stampVersion != "" {
		b.Version = stampVersion
	}
	if !vcs && stampRevision != "" {
		b.Revision, b.Time, b.Modified = stampRevision, stampTime, stampModified == "true"
	}
	return b
}

// String is the text of capd --version.
func (b buildInfo) String() string {
	var s strings.Builder
	fmt.Fprintf(&s, "capd %s\n", b.Version)
	if b.Revision != "" {
		mod := ""
		if b.Modified {
			mod = " (modified)"
		}
		fmt.Fprintf(&s, "revision %s%s\n", b.Revision, mod)
	}
	if b.Time != "" {
		fmt.Fprintf(&s, "time     %s\n", b.Time)
	}
	fmt.Fprintf(&s, "go       %s %s\n", b.Go, b.Platform)
	return s.String()
}

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the version of this binary",
		Long: `Print what this binary knows about its build (the same as capd --version):
the version of the capd module (a tag, a Go pseudo-version
v0.0.0-TIME-COMMIT for an untagged commit, with +dirty for a tree with
uncommitted changes, or (devel) when built without version control
information), the commit, its time and whether the tree was modified, and
the Go version and platform. --json prints the same for scripts, as a JSON
object (see docs/JSON.md) whose "version" is the format's and
"capd_version" the module version.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return printVersion(cmd.OutOrStdout(), asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printVersion(w io.Writer, asJSON bool) error {
	b := readBuildInfo()
	if asJSON {
		return printJSON(w, newVersionJSON(b))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
