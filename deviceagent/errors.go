package deviceagent

import (
	"errors"

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

// classify maps an error of the agent, fetcher or bootctl, or of the SUIT
// processor, to a report code and whether a retry can help. It matches
// sentinels only (errors.Is/As, never message text): the agent's own and
// those of fetcher and bootctl first (a SUIT command error may wrap a
// fetch error), then suit.Code, the one map of SUIT errors.
func classify(err error) (schemas.ErrCode, bool) {
	var ue *updateError
	if errors.As(err, &ue) {
		return ue.code, ue.transient
	}
	switch {
	case errors.Is(err, ErrHealth):
		return schemas.CodeBootFailed, false
	case errors.Is(err, bootctl.ErrTooLarge):
		return schemas.CodeSize, false
	case errors.Is(err, bootctl.ErrBelowFloor):
		return schemas.CodeRollback, false
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
	}
	if c := suit.Code(err); c != schemas.CodeInternal {
		return c, c == schemas.CodeTimeout
	}
	return schemas.CodeInternal, true
}
