package agent

import (
	"errors"

	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/internal/proto"
)

// wireCodes maps the refusals of the agent's parts to the protocol's codes.
var wireCodes = []struct {
	kind error
	code proto.Code
}{
	{store.ErrClosed, proto.CodeBusy},
	{store.ErrExists, proto.CodeExists},
	{store.ErrNotFound, proto.CodeNotFound},
	{store.ErrQuota, proto.CodeQuotaExceeded},
	{store.ErrNotSocket, proto.CodeInvalidRequest},
	{store.ErrOwnerEmpty, proto.CodePermissionDenied},
	{store.ErrNotOurs, proto.CodeNotOurs},
	{store.ErrRevoked, proto.CodePermissionDenied},
	{store.ErrNotDerivable, proto.CodeInvalidRequest},
	{registry.ErrNotFound, proto.CodeNotFound},
	{registry.ErrConflict, proto.CodeExists},
	{registry.ErrGone, proto.CodeInvalidRequest},
	{registry.ErrStillRunning, proto.CodePermissionDenied},
	{proto.ErrMalformed, proto.CodeInvalidRequest},
}

// wireError is the one place where an error becomes a protocol error: a
// *proto.Error (from the request's decoding or the authorization
// decision) as it is, a known refusal with its code, anything else as
// internal (which the caller logs).
func wireError(err error) *proto.Error {
	var perr *proto.Error
	if errors.As(err, &perr) {
		return perr
	}
	for _, w := range wireCodes {
		if errors.Is(err, w.kind) {
			return &proto.Error{Code: w.code, Message: err.Error()}
		}
	}
	return &proto.Error{Code: proto.CodeInternal, Message: err.Error()}
}
