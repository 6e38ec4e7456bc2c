package client

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// Token is a capability with no content: a sealed, empty memfd whose only
// meaning is its identity as an open file description. A publisher creates
// one, publishes it, and later Checks an fd a consumer sends back: only a
// copy of this very token passes. Revoke closes the publisher's copy and the
// agent's, after which no copy verifies any more, whoever still holds one.
type Token struct {
	name string

	mu      sync.Mutex
	f       *os.File // nil once revoked or closed
	expires time.Time
}

// NewToken creates a token for the entry name.
func NewToken(name string) (*Token, error) {
	if err := proto.ValidName(name); err != nil {
		return nil, fmt.Errorf("new token: %w", err)
	}
	fd, err := linux.MemfdCreate("capd-token:" + name)
	if err != nil {
		return nil, fmt.Errorf("new token %s: %w", name, err)
	}
	if err := linux.SealAll(fd); err != nil {
		linux.Close(fd)
		return nil, fmt.Errorf("new token %s: %w", name, err)
	}
	return &Token{name: name, f: os.NewFile(uintptr(fd), "capd-token:"+name)}, nil
}

// Name returns the entry name of the token.
func (t *Token) Name() string { return t.name }

// File returns the publisher's own copy (nil after Revoke or Close). It
// stays owned by the Token.
func (t *Token) File() *os.File {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.f
}

// Publish publishes the token under its name. With opts.TTL, Check also
// stops accepting copies at the deadline, even before the agent drops its
// own.
func (t *Token) Publish(c *Client, opts *PublishOptions) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return fmt.Errorf("publish token %s: %w", t.name, os.ErrClosed)
	}
	start := time.Now()
	if err := c.Publish(t.name, t.f, opts); err != nil {
		return err
	}
	if opts != nil && opts.TTL > 0 {
		t.expires = start.Add(opts.TTL)
	}
	return nil
}

// Check reports whether f is a copy of this token. It is false for any
// other fd, and for every fd once the token is revoked, closed or expired.
func (t *Token) Check(f *os.File) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil || (!t.expires.IsZero() && !time.Now().Before(t.expires)) {
		return false, nil
	}
	return Verify(t.f, f)
}

// Revoke closes the publisher's copy, so Check fails from now on, then
// removes the entry from the agent. An entry the agent already dropped
// because its TTL ran out is not an error.
func (t *Token) Revoke(c *Client) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	expired := !t.expires.IsZero() && !time.Now().Before(t.expires)
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
	err := c.Revoke(t.name)
	if expired && errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// Close closes the publisher's copy without asking the agent to forget the
// entry.
func (t *Token) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return nil
	}
	err := t.f.Close()
	t.f = nil
	return err
}
