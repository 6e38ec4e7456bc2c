package registry

import (
	"errors"
	"fmt"
)

// The kinds of refusal; every error wraps one (errors.Is) in an *Error
// whose text is the message for the client.
var (
	ErrNotFound     = errors.New("container not registered")
	ErrConflict     = errors.New("registration conflicts with another")
	ErrGone         = errors.New("container's cgroup is gone")
	ErrStillRunning = errors.New("container still has processes")
)

// Error is a refusal: Kind is one of the sentinels, Msg says why.
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

func errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}
