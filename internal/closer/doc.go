// Package closer closes file descriptors for callers that must never wait
// for close(2), bounding the threads that do wait.
//
// close(2) can take long: a FUSE file's close sends FUSE_FLUSH and waits,
// uninterruptibly, until the server answers, for ever if it stopped; a TCP
// socket with SO_LINGER waits up to its linger time for the peer to take
// its unsent data. So Close never calls close(2) itself, in no case: it
// queues the fd under a key (the agent uses the entry owner's uid) and
// returns. Worker goroutines, started on demand and never more than the
// limit given to New, close the queued fds, at most one fd per key at a
// time: a key whose close never returns holds one thread and delays its own
// fds only. Each worker takes the keys round robin and exits when no key
// has work, so an idle Closer has no goroutine, and there is never one per
// fd. Once the limit's worth of keys are stuck, the other keys' fds wait in
// their queues until a thread comes free; Pending still counts them.
//
// The queues are not bounded here. Every fd a caller hands over was
// admitted under its owner's quotas, and the caller counts Pending(key)
// against those quotas, so an owner whose closes are stuck cannot add more
// than its limit; the process's RLIMIT_NOFILE bounds the whole. A bound
// here would hand back an fd the caller can neither close (that may block)
// nor usefully keep, so Close never fails.
//
// Fd ownership: Close takes the fd; from then on the caller must not use
// or close it, and the Closer closes it exactly once, on a worker. Close
// errors (EIO from a flush, say) go to the function given to New: the fd is
// released whatever close(2) returns.
//
// Locking: one mutex guards the queues and counters. It is never held
// across close(2) or the error function, and Close holds it only to queue,
// so callers may call Close and Pending under locks of their own (their
// locks come first in the lock order; the error function must not take a
// lock a caller holds while calling Close).
//
// Stop waits, up to its context, for every fd handed over to be closed, and
// reports per key what is still pending (being closed, or queued behind
// one). It changes nothing else: the workers go on, and Close keeps
// working. A process stops it on its way out and exits; the kernel closes
// what is left (a thread stuck in a FUSE flush keeps the process from being
// reaped until the server answers or its connection is aborted).
package closer
