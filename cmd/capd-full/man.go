package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
)

// newGenManCmd is the hidden command behind 'make man': one page per
// command, generated from the command definitions (cobra/doc), with the
// sections cobra does not write.
func newGenManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "__gen-man DIR",
		Short:  "Write the man pages (section 1) into DIR",
		Hidden: true,
		Args:   exactArgs(1, "exactly one DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return genMan(cmd.Root(), args[0])
		},
	}
}

// genMan writes DIR/capd.1, DIR/capd-acquire.1, ... The pages are dated
// with the commit's time when the build knows it (so that one commit gives
// the same pages), else by cobra's rule (SOURCE_DATE_EPOCH, else now).
func genMan(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b := readBuildInfo()
	// The footer names a release; a pseudo-version does not fit in it.
	source := "capd"
	if !strings.Contains(b.Version, "-") && b.Version != "(devel)" {
		source += " " + b.Version
	}
	header := doc.GenManHeader{Section: "1", Source: source, Manual: "capd manual"}
	if t, err := time.Parse(time.RFC3339, b.Time); err == nil {
		header.Date = &t
	}
	root.DisableAutoGenTag = true
	manMarkdown(root)
	return genManTree(root, &header, dir)
}

// manMarkdown rewrites the help texts of cmd and below, which are plain
// text, into the markdown cobra/doc renders (through go-md2man), so that
// the pages say what --help says: indented lines become literal blocks,
// everything else has markdown's special characters escaped. It changes
// the commands: run it only to generate pages.
func manMarkdown(cmd *cobra.Command) {
	cmd.Short = mdEscape(cmd.Short)
	cmd.Long = mdText(cmd.Long)
	cmd.Flags().VisitAll(func(f *pflag.Flag) { f.Usage = mdEscape(f.Usage) })
	cmd.PersistentFlags().VisitAll(func(f *pflag.Flag) { f.Usage = mdEscape(f.Usage) })
	for _, c := range cmd.Commands() {
		manMarkdown(c)
	}
}

func mdText(text string) string {
	indented := func(l string) bool { return strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t") }
	lines := strings.Split(text, "\n")
	var out strings.Builder
	for i := 0; i < len(lines); {
		if !indented(lines[i]) {
			out.WriteString(mdEscape(lines[i]) + "\n")
			i++
			continue
		}
		j := i
		for j < len(lines) && (indented(lines[j]) || lines[j] == "" && j+1 < len(lines) && indented(lines[j+1])) {
			j++
		}
		out.WriteString("\n```\n" + strings.Join(lines[i:j], "\n") + "\n```\n\n")
		i = j
	}
	return strings.TrimSuffix(out.String(), "\n")
}

// mdEscape makes a line of plain text literal in markdown.
func mdEscape(line string) string {
	var b strings.Builder
	for i, r := range line {
		if strings.ContainsRune("\\`*_{}[]<>#|&~", r) || i == 0 && strings.ContainsRune("+-", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func genManTree(cmd *cobra.Command, header *doc.GenManHeader, dir string) error {
	for _, c := range cmd.Commands() {
		if !c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand() {
			continue
		}
		if err := genManTree(c, header, dir); err != nil {
			return err
		}
	}
	h := *header // GenMan fills in defaults
	var buf bytes.Buffer
	if err := doc.GenMan(cmd, &h, &buf); err != nil {
		return err
	}
	page := addManSections(buf.Bytes(), cmd)
	name := strings.ReplaceAll(cmd.CommandPath(), " ", "-") + ".1"
	return os.WriteFile(filepath.Join(dir, name), page, 0o644)
}

var exitCodeLine = regexp.MustCompile(`^\s+(\d+)\s+(.*)$`)

// addManSections inserts ENVIRONMENT, FILES (where they apply) and EXIT
// STATUS before SEE ALSO, in the order man-pages(7) gives.
func addManSections(page []byte, cmd *cobra.Command) []byte {
	var s bytes.Buffer
	if cmd.Name() != "version" {
		s.WriteString(".SH ENVIRONMENT\n.TP\n.B CAPD_SOCKET\nThe agent's socket, instead of " + roff(client.DefaultSocket) + ".\n")
	}
	if cmd.Parent() == nil || cmd.Name() == "agent" {
		s.WriteString(".SH FILES\n.TP\n.B " + roff(policy.DefaultPath) + "\nThe policy; then every\n.I *.toml\nfile in\n.I conf.d/\nbeside it, in lexical order.\n")
	}
	s.WriteString(".SH EXIT STATUS\n")
	for _, l := range strings.Split(exitCodesHelp, "\n") {
		if m := exitCodeLine.FindStringSubmatch(l); m != nil {
			fmt.Fprintf(&s, ".TP\n.B %s\n%s\n", roff(m[1]), roff(m[2]))
		}
	}
	at := bytes.Index(page, []byte(".SH SEE ALSO"))
	if at < 0 {
		return append(page, s.Bytes()...)
	}
	return append(page[:at:at], append(s.Bytes(), page[at:]...)...)
}

// roff escapes text for a roff line: backslashes, and a leading dot or
// apostrophe that would make the line a request.
func roff(text string) string {
	text = strings.ReplaceAll(text, `\`, `\e`)
	if strings.HasPrefix(text, ".") || strings.HasPrefix(text, "'") {
		text = `\&` + text
	}
	return text
}
