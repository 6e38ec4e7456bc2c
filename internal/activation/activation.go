// Package activation reads the fds that systemd's socket activation
// protocol passed to this process (sd_listen_fds_with_names(3)): fds 3 to
// 3+N-1 for LISTEN_FDS=N, with LISTEN_FDNAMES, when LISTEN_PID is this
// process's pid. go-systemd's activation package does the same but links
// crypto/tls for its TLS listeners, which capd's start-up paths do without.
//
// Fd ownership: the fds belong to the process from its start; Files hands
// their numbers to the caller, which owns them from then on.
package activation

import (
	"os"
	"strconv"
	"strings"
)

// File is one fd passed by socket activation.
type File struct {
	FD int
	// Name is its LISTEN_FDNAMES entry, "unknown" where that names none
	// (as sd_listen_fds_with_names does).
	Name string
}

// MaxFDs bounds what LISTEN_FDS may claim.
const MaxFDs = 1 << 16

// Files returns the fds passed to this process, or nil when LISTEN_PID is
// not its pid (the variables were meant for another process) or
// LISTEN_FDS is not a count. NamesMatch reports whether LISTEN_FDNAMES
// named exactly that many fds.
func Files() (files []File, namesMatch bool) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil, false
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 || n > MaxFDs {
		return nil, false
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	namesMatch = os.Getenv("LISTEN_FDNAMES") != "" && len(names) == n
	files = make([]File, n)
	for i := range files {
		files[i] = File{FD: 3 + i, Name: "unknown"}
		if namesMatch && names[i] != "" {
			files[i].Name = names[i]
		}
	}
	return files, namesMatch
}

// Unset removes the protocol's variables from the environment, so that
// programs this process starts do not take them for theirs.
func Unset() {
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID"} {
		os.Unsetenv(k)
	}
}
