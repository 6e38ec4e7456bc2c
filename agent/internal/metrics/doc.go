// Package metrics serves the agent's metrics endpoint: Prometheus's text
// exposition format (version 0.0.4; Text builds it) over a minimal
// HTTP/1.x responder for exactly GET and HEAD /metrics, on a unix stream
// socket, a TCP address or both (Open). It is not net/http, which the capd
// binary does not link: it reads one request head of at most MaxHead
// bytes, answers it, and closes the connection.
//
// Bounds: each listener has one accept goroutine and answers at most 16
// connections at once, one goroutine and a 4 KiB buffer each; a connection
// gets Timeout (2 s) to send its head and as long again to read the
// answer, deadlines enforced with SO_RCVTIMEO and SO_SNDTIMEO set to what
// is left before every read and send, so 16 slow or silent clients delay
// the next scrape by about that (and 200 ms of lingering for their close).
// Over TCP a Host naming anything but an address or localhost is refused
// (DNS rebinding). The agent's request path is
// never involved: the endpoint renders with a callback that reads
// atomics and takes the agent's locks only briefly, never while it sends.
//
// Fd ownership: an Endpoint owns its listening sockets (and the unix
// socket's file, removed by Close if it is still the one it bound), its
// poller's eventfd, and each accepted connection until it closes it, on the
// goroutine that accepted it. Close stops the loops (shutting down a
// connection in progress), waits for them, then closes everything.
package metrics
