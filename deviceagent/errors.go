package deviceagent

import (
	"errors"
	"strings"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Sentinel errors.
var (
	// ErrConfig: a configuration value is missing or invalid.
	ErrConfig = errors.New("deviceagent: invalid configuration")
	// ErrState: the persisted state file is unreadable.
	ErrState = errors.New("deviceagent: bad state file")
	// ErrDeferred: the device policy deferred an update.
	ErrDeferred = errors.New("deviceagent: update deferred by policy")
	// ErrHealth: the new image failed its health check.
	ErrHealth = errors.New("deviceagent: health check failed")
)

// updateError is a failed step with its report code and whether trying
// again can help.
type updateError struct {
	code      schemas.ErrCode
	transient bool
	err       error
}

func (e *updateError) Error() string { return e.code.String() + ": " + e.err.Error() }
func (e *updateError) Unwrap() error { return e.err }

func permanent(code schemas.ErrCode, err error) error {
	return &updateError{code: code, err: err}
}

func transient(code schemas.ErrCode, err error) error {
	return &updateError{code: code, transient: true, err: err}
}

// classify maps an error from suit, fetcher or bootctl to a report code
// and whether a retry can help.
func classify(err error) (schemas.ErrCode, bool) {
	var ue *updateError
	if errors.As(err, &ue) {
		return ue.code, ue.transient
	}
	msg := err.Error()
	switch {
	case errors.Is(err, suit.ErrUntrusted):
		return schemas.CodeUntrustedKey, false
	case errors.Is(err, suit.ErrDigestMismatch), errors.Is(err, suit.ErrSeveredDigest):
		return schemas.CodeSignature, false
	case errors.Is(err, suit.ErrMalformed), errors.Is(err, suit.ErrTruncated), errors.Is(err, suit.ErrDuplicateKey):
		return schemas.CodeMalformed, false
	case errors.Is(err, suit.ErrRollback):
		return schemas.CodeRollback, false
	case errors.Is(err, suit.ErrExpired):
		return schemas.CodeExpired, false
	case errors.Is(err, suit.ErrConditionFailed):
		switch {
		case strings.Contains(msg, "vendor-identifier"):
			return schemas.CodeVendorMismatch, false
		case strings.Contains(msg, "class-identifier"):
			return schemas.CodeClassMismatch, false
		case strings.Contains(msg, "device-identifier"):
			return schemas.CodeDeviceMismatch, false
		case strings.Contains(msg, "image-match"):
			return schemas.CodeDigest, false
		}
		return schemas.CodeUnsupported, false
	case errors.Is(err, suit.ErrTooLarge), errors.Is(err, bootctl.ErrTooLarge):
		return schemas.CodeSize, false
	case errors.Is(err, suit.ErrUnsupported), errors.Is(err, suit.ErrUnknownCommand), errors.Is(err, suit.ErrParameter),
		errors.Is(err, suit.ErrAborted):
		return schemas.CodeUnsupported, false
	case errors.Is(err, fetcher.ErrDigest), errors.Is(err, bootctl.ErrDigestMismatch):
		return schemas.CodeDigest, false
	case errors.Is(err, fetcher.ErrNoSource) && errors.Is(err, fetcher.ErrBadChunk):
		return schemas.CodeBadChunk, true
	case errors.Is(err, fetcher.ErrNoSource) && errors.Is(err, fetcher.ErrChunkTable):
		return schemas.CodeChunkTable, true
	case errors.Is(err, fetcher.ErrNoSource):
		return schemas.CodeNoSource, true
	case errors.Is(err, bootctl.ErrNoFreeSlot):
		return schemas.CodeSlotFull, true
	case errors.Is(err, fetcher.ErrSink):
		return schemas.CodeInternal, true
	case errors.Is(err, ErrHealth):
		return schemas.CodeBootFailed, false
	}
	return schemas.CodeInternal, true
}
