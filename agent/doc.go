// Package agent is the capd daemon: it accepts clients on an AF_UNIX
// SOCK_SEQPACKET socket, learns each client's identity from the kernel once
// per connection, and serves publish, acquire, revoke, list and whoami
// against a store of named fds under the admin's policy.
//
// Concurrency: one goroutine per connection, doing plain blocking
// recvmsg/sendmsg with SO_RCVTIMEO/SO_SNDTIMEO as idle and send limits; the
// number of connections is bounded globally and per uid, and a connection has
// at most one request in flight. Expiry uses one timer for the whole store.
//
// Fd ownership: the store owns one fd per entry behind a reference count.
// The store's own reference is dropped on revoke, replace or expiry; an
// acquire holds a reference only while sendmsg runs, so a concurrent revoke
// can never make the agent send a recycled fd number. The last reference
// closes the fd. Each connection goroutine owns its socket and closes it
// exactly once; Shutdown only shuts sockets down to wake their readers.
package agent
