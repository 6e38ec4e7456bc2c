// Package client is the Go library for capd publishers and consumers.
//
// A Client is one connection to the agent; it is safe for concurrent use and
// runs one request at a time. Publish hands the agent a dup of an fd under a
// name, Acquire returns a dup of a published fd, Revoke removes an entry,
// List and Whoami report. Verify tells whether two fds share one open file
// description (F_DUPFD_QUERY, else kcmp(2)), and Token is a memfd used as a
// pure capability: publish it, Check what comes back against it, Revoke it.
//
// Fd ownership: Publish borrows its *os.File; the caller keeps it. Acquire
// returns a new *os.File the caller owns. A Client owns its socket, closed by
// Close; a Token owns its memfd, closed by Revoke or Close.
//
// The package speaks the wire format of docs/PROTOCOL.md and does not depend
// on the agent.
package client
