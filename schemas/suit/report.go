package suit

import (
	"context"
	"errors"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
)

// CommandError is the failure of one command run by a Processor. It wraps
// the cause (a sentinel of errors.go or the Target's error).
type CommandError struct {
	Sequence  string
	Component int
	Label     int64
	Err       error
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%s (component %d): %v", CommandName(e.Label), e.Component, e.Err)
}

func (e *CommandError) Unwrap() error { return e.Err }

// Code maps an error of Verify or a Processor to the
// error code a device report carries. Nil maps to CodeNone; errors this
// package does not know map to CodeInternal.
func Code(err error) schemas.ErrCode {
	var ce *CommandError
	switch {
	case err == nil:
		return schemas.CodeNone
	case errors.Is(err, ErrConditionFailed) && errors.As(err, &ce):
		switch ce.Label {
		case CondVendorID:
			return schemas.CodeVendorMismatch
		case CondClassID:
			return schemas.CodeClassMismatch
		case CondDeviceID:
			return schemas.CodeDeviceMismatch
		case CondImageMatch, CondCheckContent:
			return schemas.CodeDigest
		}
		return schemas.CodePolicy
	case errors.Is(err, ErrUntrusted):
		return schemas.CodeUntrustedKey
	case errors.Is(err, ErrDigestMismatch), errors.Is(err, ErrSeveredDigest):
		return schemas.CodeSignature
	case errors.Is(err, ErrRollback):
		return schemas.CodeRollback
	case errors.Is(err, ErrExpired):
		return schemas.CodeExpired
	case errors.Is(err, ErrDecrypt), errors.Is(err, ErrPlaintextDigest):
		return schemas.CodeDigest
	case errors.Is(err, ErrNoRecipient), errors.Is(err, ErrKeyUnwrap):
		return schemas.CodeUnauthorized
	case errors.Is(err, ErrTooLarge):
		return schemas.CodeSize
	case errors.Is(err, ErrUnsupported), errors.Is(err, ErrUnknownCommand):
		return schemas.CodeUnsupported
	case errors.Is(err, ErrNotVerified):
		return schemas.CodeUnauthorized
	case errors.Is(err, ErrSeveredMissing):
		return schemas.CodeNotFound
	case errors.Is(err, ErrAborted), errors.Is(err, ErrConditionFailed):
		return schemas.CodePolicy
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrTruncated), errors.Is(err, ErrDuplicateKey),
		errors.Is(err, ErrParameter), errors.Is(err, ErrKey):
		return schemas.CodeMalformed
	case errors.Is(err, context.DeadlineExceeded):
		return schemas.CodeTimeout
	}
	return schemas.CodeInternal
}
