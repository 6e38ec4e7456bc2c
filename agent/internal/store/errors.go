package store

import (
	"errors"
	"fmt"
)

// The kinds of refusal. Every error the store returns for a request wraps
// one of them (errors.Is) in an *Error whose text is the message for the
// client.
var (
	ErrClosed     = errors.New("store is closed")
	ErrExists     = errors.New("entry exists")
	ErrNotFound   = errors.New("entry not found")
	ErrQuota      = errors.New("quota exceeded")
	ErrNotSocket  = errors.New("entry is not a socket")
	ErrOwnerEmpty = errors.New("owner cgroup has no processes")
)

// Error is a refusal: Kind is one of the sentinels, Msg says why in words
// the client can act on.
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

func errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}
