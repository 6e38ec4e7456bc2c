package store

import (
	"errors"

	"github.com/capd-dev/capd/agent/internal/refusal"
)

// The kinds of refusal. Every error the store returns for a request wraps
// one of them (errors.Is) in a *refusal.Error whose text is the message
// for the client.
var (
	ErrClosed     = errors.New("store is closed")
	ErrExists     = errors.New("entry exists")
	ErrNotFound   = errors.New("entry not found")
	ErrQuota      = errors.New("quota exceeded")
	ErrNotSocket  = errors.New("entry is not a socket")
	ErrOwnerEmpty = errors.New("owner cgroup has no processes")
)

var errorf = refusal.Errorf
