package registry

import (
	"errors"

	"github.com/capd-dev/capd/agent/internal/refusal"
)

// The kinds of refusal; every error wraps one (errors.Is) in a
// *refusal.Error whose text is the message for the client.
var (
	ErrNotFound     = errors.New("container not registered")
	ErrConflict     = errors.New("registration conflicts with another")
	ErrGone         = errors.New("container's cgroup is gone")
	ErrStillRunning = errors.New("container still has processes")
)

var errorf = refusal.Errorf
