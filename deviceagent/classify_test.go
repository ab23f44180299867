package deviceagent

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestClassify pins the report code and retry decision of every sentinel
// the agent can meet, wrapped as the code wraps them (%w, a SUIT command
// error around a target's error): one map, matched on sentinels only.
func TestClassify(t *testing.T) {
	cond := func(label int64) error {
		return &suit.CommandError{Sequence: "validate", Label: label, Err: fmt.Errorf("%w: manifest a, device b", suit.ErrConditionFailed)}
	}
	inFetch := func(err error) error { return &suit.CommandError{Sequence: "install", Label: suit.DirFetch, Err: err} }
	for _, c := range []struct {
		name  string
		err   error
		code  schemas.ErrCode
		retry bool
	}{
		// The agent's own.
		{"health", fmt.Errorf("%w: self-test", ErrHealth), schemas.CodeBootFailed, false},
		{"permanent", permanent(schemas.CodeConflict, errors.New("x")), schemas.CodeConflict, false},
		{"transient", transient(schemas.CodeNoSource, errors.New("x")), schemas.CodeNoSource, true},
		// fetcher.
		{"no source", fmt.Errorf("%w: all failed", fetcher.ErrNoSource), schemas.CodeNoSource, true},
		{"no source, bad chunk", fmt.Errorf("%w: %w", fetcher.ErrNoSource, fetcher.ErrBadChunk), schemas.CodeBadChunk, true},
		{"no source, chunk table", fmt.Errorf("%w: %w", fetcher.ErrNoSource, fetcher.ErrChunkTable), schemas.CodeChunkTable, true},
		{"no source inside a fetch command", inFetch(fmt.Errorf("%w: %w", fetcher.ErrNoSource, context.DeadlineExceeded)), schemas.CodeNoSource, true},
		{"image digest", fetcher.ErrDigest, schemas.CodeDigest, false},
		{"sink", fmt.Errorf("%w: disk", fetcher.ErrSink), schemas.CodeInternal, true},
		// bootctl.
		{"too large", bootctl.ErrTooLarge, schemas.CodeSize, false},
		{"below floor", bootctl.ErrBelowFloor, schemas.CodeRollback, false},
		{"slot digest", bootctl.ErrDigestMismatch, schemas.CodeDigest, false},
		{"no free slot", bootctl.ErrNoFreeSlot, schemas.CodeSlotFull, true},
		// suit, through suit.Code.
		{"vendor", cond(suit.CondVendorID), schemas.CodeVendorMismatch, false},
		{"class", cond(suit.CondClassID), schemas.CodeClassMismatch, false},
		{"device", cond(suit.CondDeviceID), schemas.CodeDeviceMismatch, false},
		{"image match", cond(suit.CondImageMatch), schemas.CodeDigest, false},
		{"other condition", cond(suit.CondComponentSlot), schemas.CodePolicy, false},
		{"untrusted", suit.ErrUntrusted, schemas.CodeUntrustedKey, false},
		{"not verified", suit.ErrNotVerified, schemas.CodeUnauthorized, false},
		{"digest mismatch", suit.ErrDigestMismatch, schemas.CodeSignature, false},
		{"severed digest", suit.ErrSeveredDigest, schemas.CodeSignature, false},
		{"severed missing", suit.ErrSeveredMissing, schemas.CodeNotFound, false},
		{"malformed", suit.ErrMalformed, schemas.CodeMalformed, false},
		{"truncated", suit.ErrTruncated, schemas.CodeMalformed, false},
		{"duplicate key", suit.ErrDuplicateKey, schemas.CodeMalformed, false},
		{"parameter", suit.ErrParameter, schemas.CodeMalformed, false},
		{"key", suit.ErrKey, schemas.CodeMalformed, false},
		{"unsupported", suit.ErrUnsupported, schemas.CodeUnsupported, false},
		{"unknown algorithm", suit.ErrUnknownAlgorithm, schemas.CodeUnsupported, false},
		{"unknown command", suit.ErrUnknownCommand, schemas.CodeUnsupported, false},
		{"aborted", suit.ErrAborted, schemas.CodePolicy, false},
		{"condition without command", suit.ErrConditionFailed, schemas.CodePolicy, false},
		{"rollback", suit.ErrRollback, schemas.CodeRollback, false},
		{"expired", suit.ErrExpired, schemas.CodeExpired, false},
		{"suit too large", suit.ErrTooLarge, schemas.CodeSize, false},
		{"decrypt", suit.ErrDecrypt, schemas.CodeDigest, false},
		{"plaintext digest", suit.ErrPlaintextDigest, schemas.CodeDigest, false},
		{"no recipient", suit.ErrNoRecipient, schemas.CodeUnauthorized, false},
		{"key unwrap", suit.ErrKeyUnwrap, schemas.CodeUnauthorized, false},
		{"timeout", context.DeadlineExceeded, schemas.CodeTimeout, true},
		// Unknown.
		{"unknown", errors.New("something else"), schemas.CodeInternal, true},
	} {
		code, retry := classify(fmt.Errorf("step: %w", c.err))
		if code != c.code || retry != c.retry {
			t.Errorf("%s: %s, retry %v; want %s, retry %v", c.name, code, retry, c.code, c.retry)
		}
	}
}
