// Command capd is the capd command line: the binary users, units, OCI
// runtimes and containers run. It runs the commands that start in front of
// a workload (acquire, publish, hook, whoami) itself, and executes
// capd-full, the binary beside it, for everything else: the agent, the
// other commands, help, completion, and any usage error, which capd-full
// reports. Both parse the same flag definitions (internal/cli), so the two
// binaries are one command line.
//
// capd links no command framework and none of the agent's code: each
// package linked is paid for at every start (docs/ARCHITECTURE.md, "Two
// binaries").
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/spf13/pflag"

	"github.com/capd-dev/capd/internal/cli"
	"github.com/capd-dev/capd/internal/linux"
)

// init keeps main on the process's first thread: capd's commands end in
// execve (the workload, or capd-full), which from another thread must
// first make that thread the leader. Measured in one interleaved run
// (BenchmarkOneShot), 0.04-0.06x of s6-fdholder-retrieve less per acquire.
func init() { runtime.LockOSThread() }

// full is the name of the binary with every command, beside this one.
const full = "capd-full"

func main() {
	if len(os.Args) > 1 {
		if run, ok := fast[os.Args[1]]; ok {
			if code, ran := run(os.Args[2:]); ran {
				os.Exit(code)
			}
		}
	}
	os.Exit(execFull())
}

// fast runs a start-up command when its arguments parse and check; ran
// false leaves the whole command line to capd-full.
var fast = map[string]func(args []string) (code int, ran bool){
	"acquire": func(args []string) (int, bool) {
		var a cli.Acquire
		fs := flags("acquire", a.Flags)
		if fs.Parse(args) != nil || a.Args(fs.Args(), fs.ArgsLenAtDash()) != nil {
			return 0, false
		}
		return cli.Report(os.Stderr, a.Run(os.Stderr, fs.Args(), fs.ArgsLenAtDash())), true
	},
	"publish": func(args []string) (int, bool) {
		var p cli.Publish
		fs := flags("publish", p.Flags)
		if fs.Parse(args) != nil || p.Args(fs.Args(), fs.ArgsLenAtDash()) != nil {
			return 0, false
		}
		return cli.Report(os.Stderr, p.Run(os.Stderr, fs.Args(), fs.ArgsLenAtDash())), true
	},
	"hook": func(args []string) (int, bool) {
		var h cli.Hook
		fs := flags("hook", h.Flags)
		// Any argument (hook install) is capd-full's.
		if fs.Parse(args) != nil || h.Args(fs.Args()) != nil {
			return 0, false
		}
		return cli.Report(os.Stderr, h.Run(os.Stdin, os.Stderr)), true
	},
	"whoami": func(args []string) (int, bool) {
		if len(args) != 0 { // --json, --help, anything: capd-full's
			return 0, false
		}
		return cli.Report(os.Stderr, cli.Whoami(os.Stdout)), true
	},
}

// flags is a silent flag set for command name with define's flags: what
// does not parse goes to capd-full, which says why.
func flags(name string, define func(*pflag.FlagSet)) *pflag.FlagSet {
	fs := pflag.NewFlagSet("capd "+name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	define(fs)
	return fs
}

// execFull executes capd-full, beside this binary, with this command line;
// it returns only on failure.
func execFull() int {
	exe, err := os.Executable()
	if err != nil {
		return cli.Report(os.Stderr, fmt.Errorf("find capd-full: %w", err))
	}
	path := filepath.Join(filepath.Dir(exe), full)
	err = linux.Execve(path, append([]string{"capd"}, os.Args[1:]...), os.Environ())
	if errors.Is(err, os.ErrNotExist) {
		err = fmt.Errorf("this command needs %s, which is not installed beside %s: %w", full, exe, err)
	}
	return cli.Report(os.Stderr, &cli.ExitError{Code: cli.ExitFailure, Err: err})
}
