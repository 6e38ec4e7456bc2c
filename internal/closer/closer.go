package closer

import (
	"context"
	"fmt"
	"sync"

	"github.com/capd-dev/capd/internal/linux"
)

// Closer closes fds on worker goroutines; see the package doc. Its methods
// are safe for concurrent use.
type Closer struct {
	max   int
	onErr func(key uint32, fd int, err error)

	mu      sync.Mutex
	keys    map[uint32]*queue // keys with fds pending
	ready   []uint32          // keys with queued fds and no close in progress, oldest first
	workers int               // worker goroutines running
	busy    int               // workers inside close(2)
	pending int               // fds handed over and not yet closed
	drained chan struct{}     // closed when pending reaches 0; nil while nobody waits
}

// queue is one key's fds. It is in Closer.ready exactly when it has fds and
// no close in progress.
type queue struct {
	fds     []int
	closing bool
}

// New returns a Closer with at most limit threads in close(2) at once (at
// least 1). onErr, if not nil, is called on a worker for every close(2)
// that fails.
func New(limit int, onErr func(key uint32, fd int, err error)) *Closer {
	return &Closer{max: max(limit, 1), onErr: onErr, keys: make(map[uint32]*queue)}
}

// Close takes fd and closes it later, on a worker, after the fds of key
// handed over before it. It never blocks on close(2) and never fails.
func (c *Closer) Close(key uint32, fd int) {
	c.mu.Lock()
	q := c.keys[key]
	if q == nil {
		q = &queue{}
		c.keys[key] = q
	}
	q.fds = append(q.fds, fd)
	c.pending++
	if !q.closing && len(q.fds) == 1 {
		c.ready = append(c.ready, key)
	}
	// Workers not inside close(2) are about to take a ready key; start
	// one more only if the ready keys outnumber them.
	start := c.workers < c.max && len(c.ready) > c.workers-c.busy
	if start {
		c.workers++
	}
	c.mu.Unlock()
	if start {
		go c.work()
	}
}

// work closes fds of ready keys, one key at a time, until none is ready.
func (c *Closer) work() {
	c.mu.Lock()
	for len(c.ready) > 0 {
		key := c.ready[0]
		c.ready = c.ready[1:]
		q := c.keys[key]
		fd := q.fds[0]
		q.fds = q.fds[1:]
		q.closing = true
		c.busy++
		c.mu.Unlock()

		if err := linux.Close(fd); err != nil && c.onErr != nil {
			c.onErr(key, fd, err)
		}

		c.mu.Lock()
		c.busy--
		c.pending--
		q.closing = false
		if len(q.fds) > 0 {
			c.ready = append(c.ready, key) // behind the other keys
		} else {
			delete(c.keys, key)
		}
		if c.pending == 0 && c.drained != nil {
			close(c.drained)
			c.drained = nil
		}
	}
	c.workers--
	c.mu.Unlock()
}

// Pending returns how many fds of key are queued or being closed.
func (c *Closer) Pending(key uint32) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys[key].len()
}

func (q *queue) len() int {
	if q == nil {
		return 0
	}
	n := len(q.fds)
	if q.closing {
		n++
	}
	return n
}

// Stop waits until every fd handed over so far and since is closed, or ctx
// ends. Then it returns, per key, how many fds are still pending, with an
// error wrapping ctx's; nil, nil when everything was closed.
func (c *Closer) Stop(ctx context.Context) (map[uint32]int, error) {
	c.mu.Lock()
	if c.pending == 0 {
		c.mu.Unlock()
		return nil, nil
	}
	if c.drained == nil {
		c.drained = make(chan struct{})
	}
	drained := c.drained
	c.mu.Unlock()
	select {
	case <-drained:
		return nil, nil
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == 0 {
		return nil, nil
	}
	stuck := make(map[uint32]int, len(c.keys))
	for k, q := range c.keys {
		stuck[k] = q.len()
	}
	return stuck, fmt.Errorf("%d fds of %d keys still being closed: %w", c.pending, len(stuck), ctx.Err())
}
