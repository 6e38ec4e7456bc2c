// Package refusal is the error type the agent's parts refuse requests
// with: a kind (a sentinel of the refusing package, for errors.Is and the
// agent's one mapping to wire codes) and a message for the client. It owns
// no state, fds or locks.
package refusal

import "fmt"

// Error is a refusal: Kind is a sentinel, Msg says why in words the client
// can act on (and is the whole text: the kind is for code, not people).
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

// Errorf returns a refusal of kind with a formatted message.
func Errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}
