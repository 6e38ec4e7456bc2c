package main

import (
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/capd-dev/capd/client"
)

// completeTimeout bounds the whole conversation with the agent behind one
// shell completion: no completion beats a shell that hangs on TAB.
const completeTimeout = time.Second

// addCompletions makes the shell completions (capd completion bash|zsh|fish)
// offer what the agent lists: OWNER:NAME for acquire, the caller's own
// names for revoke (another owner's with --owner) and owner identities for
// --owner. An unreachable or failing agent gives no completion, silently.
// args are the program's arguments (for __complete: the words typed).
func addCompletions(root *cobra.Command, args []string) {
	for _, c := range root.Commands() {
		switch c.Name() {
		case "acquire":
			c.ValidArgsFunction = func(cmd *cobra.Command, refs []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if dashTyped(args) {
					return nil, cobra.ShellCompDirectiveDefault // COMMAND and its arguments
				}
				return completeAcquire(cmd, refs, toComplete)
			}
		case "revoke":
			c.ValidArgsFunction = completeRevoke
			c.RegisterFlagCompletionFunc("owner", completeOwner)
		}
	}
}

// agentEntries lists the entries the caller may see, and the caller's
// identity when who is set; ok is false when the agent did not answer in
// time.
func agentEntries(who bool) (entries []client.Entry, id client.Identity, ok bool) {
	c, err := client.DialDeadline("", time.Now().Add(completeTimeout))
	if err != nil {
		return nil, id, false
	}
	defer c.Close()
	if entries, err = c.List(); err != nil {
		return nil, id, false
	}
	if who {
		if id, err = c.Whoami(); err != nil {
			return nil, id, false
		}
	}
	return entries, id, true
}

// completable reports whether s can be offered to a shell as typed: no
// control characters (a newline or tab would break cobra's completion
// protocol), no spaces, no invalid UTF-8.
func completable(s string) bool {
	return s != "" && utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) })
}

// describe is an entry's completion description: its kind, and whether it
// is pinned.
func describe(e client.Entry) string {
	d := e.Kind
	if e.Pinned {
		d += ", pinned"
	}
	if utf8.ValidString(d) && !strings.ContainsFunc(d, unicode.IsControl) {
		return "\t" + d
	}
	return ""
}

// dashTyped reports whether the words before the one being completed hold
// '--'. Cobra cannot tell: it parses the flags with a '--' of its own
// appended, and pflag does not reset ArgsLenAtDash on the next parse.
func dashTyped(args []string) bool {
	if len(args) < 2 || args[0] != cobra.ShellCompRequestCmd && args[0] != cobra.ShellCompNoDescRequestCmd {
		return false
	}
	return slices.Contains(args[1:len(args)-1], "--")
}

// completeAcquire completes OWNER:NAME (before '--').
func completeAcquire(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	entries, _, ok := agentEntries(false)
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, e := range entries {
		ref := e.Owner + ":" + e.Name
		if completable(ref) && strings.HasPrefix(ref, toComplete) && !slices.Contains(args, ref) {
			out = append(out, ref+describe(e))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeRevoke completes the names of the caller's own entries, or of
// --owner's.
func completeRevoke(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	owner, _ := cmd.Flags().GetString("owner")
	entries, id, ok := agentEntries(owner == "")
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	if owner == "" {
		owner = id.Name
	}
	var out []string
	for _, e := range entries {
		if e.Owner == owner && completable(e.Name) && strings.HasPrefix(e.Name, toComplete) {
			out = append(out, e.Name+describe(e))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeOwner completes the owner identities of the entries the caller
// sees (for a host administrator, every owner).
func completeOwner(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	entries, _, ok := agentEntries(false)
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, e := range entries {
		if completable(e.Owner) && strings.HasPrefix(e.Owner, toComplete) && !slices.Contains(out, e.Owner) {
			out = append(out, e.Owner)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
