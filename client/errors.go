package client

import (
	"errors"
	"os"

	"github.com/capd-dev/capd/internal/proto"
)

// Error is an error the agent reported, with its stable code; errors.Is
// matches it against the sentinels below by code.
type Error = proto.Error

// Sentinels for errors.Is, one per stable protocol error code.
var (
	ErrInvalidRequest     = proto.ErrInvalidRequest
	ErrUnsupportedVersion = proto.ErrUnsupportedVersion
	ErrPermissionDenied   = proto.ErrPermissionDenied
	ErrNotFound           = proto.ErrNotFound
	ErrNotOurs            = proto.ErrNotOurs
	ErrExists             = proto.ErrExists
	ErrQuotaExceeded      = proto.ErrQuotaExceeded
	ErrBusy               = proto.ErrBusy
	ErrInternal           = proto.ErrInternal
	ErrInvalidConfig      = proto.ErrInvalidConfig
)

var (
	// ErrClosed is returned by a Client after Close.
	ErrClosed = errors.New("client is closed")
	// ErrProtocol reports a reply that breaks the protocol.
	ErrProtocol = errors.New("protocol violation by the agent")
	// ErrVerifyUnsupported reports a kernel with neither F_DUPFD_QUERY nor
	// kcmp(2): Verify cannot answer, and never guesses.
	ErrVerifyUnsupported = errors.New("kernel supports neither F_DUPFD_QUERY nor kcmp")
	// ErrTimeout reports an agent that did not accept the connection or
	// answer within the client's bound (SetTimeout, SetDeadline,
	// DialDeadline). It also matches os.ErrDeadlineExceeded.
	ErrTimeout error = timeoutError{}
)

type timeoutError struct{}

func (timeoutError) Error() string        { return "the agent did not answer in time" }
func (timeoutError) Timeout() bool        { return true }
func (timeoutError) Is(target error) bool { return target == os.ErrDeadlineExceeded }
