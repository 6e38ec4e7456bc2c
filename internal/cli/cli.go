// Package cli holds what the two capd binaries share: the start-up
// commands (acquire, publish, whoami, hook) with their flags, the exit
// codes and how an error maps to one, and the escaping of what the agent
// says before it reaches a terminal.
//
// cmd/capd, the binary users and units run, parses the start-up commands
// itself with these flag sets and hands everything else (and every usage
// error and --help) to cmd/capd-full, whose cobra commands use the same
// definitions. Nothing here may import cobra or text/template: every
// package this one imports is paid for at each start of a workload.
//
// Fds: the commands hand the fds they acquire or are passed to the program
// they execute, or to the agent; nothing here keeps one.
package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/capd-dev/capd/client"
)

// Exit codes, stable and documented in --help and the README.
const (
	ExitOK               = 0
	ExitFailure          = 1
	ExitUsage            = 2
	ExitUnreachable      = 3
	ExitPermissionDenied = 4
	ExitNotFound         = 5
	ExitExists           = 6
	ExitQuotaExceeded    = 7
	ExitBusy             = 8
	ExitNotOurs          = 9
	ExitCannotExec       = 126
	ExitCommandNotFound  = 127
)

// ExitCodesHelp documents the exit codes in every command's help.
const ExitCodesHelp = `Exit codes:
  0    success
  1    failure not listed below
  2    usage error (bad flags or arguments)
  3    the agent is not reachable on its socket
  4    permission-denied: policy or the owner's allow list refuses it
  5    not-found: no such entry (never published, revoked or expired)
  6    exists: the name is already published
  7    quota-exceeded: a store or quota limit refuses the entry
  8    busy: the agent refuses more connections or is shutting down
  9    check: not-ours: the fd is none of the entry's descriptions
  126  acquire: COMMAND cannot be executed
  127  acquire: COMMAND not found`

// ExitError carries an exit code out of a command.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// UsageErr is a usage error (exit code 2).
func UsageErr(format string, args ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, args...)}
}

// IsUsage reports whether err is a usage error.
func IsUsage(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && ee.Code == ExitUsage
}

// Code maps an error to the documented exit code.
func Code(err error) int {
	var ee *ExitError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ee):
		return ee.Code
	case errors.Is(err, client.ErrPermissionDenied):
		return ExitPermissionDenied
	case errors.Is(err, client.ErrNotFound):
		return ExitNotFound
	case errors.Is(err, client.ErrExists):
		return ExitExists
	case errors.Is(err, client.ErrQuotaExceeded):
		return ExitQuotaExceeded
	case errors.Is(err, client.ErrBusy):
		return ExitBusy
	case errors.Is(err, client.ErrNotOurs):
		return ExitNotOurs
	}
	return ExitFailure
}

// Report prints err, if any, as capd does and returns its exit code.
// Agent errors quote cgroup paths and identities, which may hold any byte.
func Report(stderr io.Writer, err error) int {
	if err != nil {
		fmt.Fprintf(stderr, "capd: %s\n", Escape(err.Error()))
	}
	return Code(err)
}

// Dial connects to the agent, mapping failure to ExitUnreachable.
func Dial() (*client.Client, error) {
	c, err := client.Dial("")
	if err != nil {
		return nil, &ExitError{Code: ExitUnreachable, Err: fmt.Errorf("%w (is the agent running? set CAPD_SOCKET for another socket)", err)}
	}
	return c, nil
}

// Ask dials the agent, asks it one thing and hangs up.
func Ask[T any](q func(*client.Client) (T, error)) (T, error) {
	c, err := Dial()
	if err != nil {
		var zero T
		return zero, err
	}
	defer c.Close()
	return q(c)
}

// spanUnits are systemd's time span units (systemd.time(7)) that Go's
// durations spell otherwise, longest first.
var spanUnits = strings.NewReplacer("minutes", "m", "minute", "m", "min", "m", "msec", "ms", "usec", "us",
	"seconds", "s", "second", "s", "sec", "s", "hours", "h", "hour", "h", "hr", "h")

// ParseSpan reads a duration as Go writes it (1m30s) or as systemd does
// (1min 30s, 2h, 500msec), so that a unit's timeouts can be copied.
func ParseSpan(s string) (time.Duration, error) {
	return time.ParseDuration(spanUnits.Replace(strings.ReplaceAll(s, " ", "")))
}
