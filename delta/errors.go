package delta

import "errors"

// Errors of a delta's bytes. Each wraps ErrCorrupt, so a caller that only
// needs "this delta must not be used" (discard it, fetch it again or take
// the full image) can test for that; the specific sentinel names what was
// wrong.
var (
	// ErrCorrupt is the parent of every reason a delta's bytes are refused.
	ErrCorrupt = errors.New("delta: corrupt delta")
	// ErrTruncated is returned when the delta ends before its header, its
	// frame table or a frame.
	ErrTruncated = wrapErr(ErrCorrupt, "delta: truncated")
	// ErrMagic is returned when the delta does not start with "FCDL".
	ErrMagic = wrapErr(ErrCorrupt, "delta: bad magic")
	// ErrVersion is returned for a format version other than FormatVersion.
	ErrVersion = wrapErr(ErrCorrupt, "delta: unsupported format version")
	// ErrCodec is returned for an unknown frame compression.
	ErrCodec = wrapErr(ErrCorrupt, "delta: unknown frame codec")
	// ErrFrameSize is returned for a frame size outside MinFrameSize..MaxFrameSize.
	ErrFrameSize = wrapErr(ErrCorrupt, "delta: bad frame size")
	// ErrSize is returned for a target of 0 bytes or a source or target
	// over MaxImageSize.
	ErrSize = wrapErr(ErrCorrupt, "delta: bad image size")
	// ErrFrameCount is returned when the frame count is not the number of
	// frames the target size needs.
	ErrFrameCount = wrapErr(ErrCorrupt, "delta: frame count does not match the target size")
	// ErrReserved is returned when a reserved header field is not zero.
	ErrReserved = wrapErr(ErrCorrupt, "delta: reserved field set")
	// ErrHeaderDigest is returned when the header and frame table do not
	// hash to the digest that follows them.
	ErrHeaderDigest = wrapErr(ErrCorrupt, "delta: header digest mismatch")
	// ErrFrameTable is returned for a frame table entry whose offset or
	// lengths are impossible: frames not contiguous, a length of zero or
	// over the bound for the frame size.
	ErrFrameTable = wrapErr(ErrCorrupt, "delta: bad frame table entry")
	// ErrTrailingData is returned when bytes follow the last frame.
	ErrTrailingData = wrapErr(ErrCorrupt, "delta: bytes after the last frame")
	// ErrFrameDigest is returned when a frame's bytes do not hash to the
	// digest in the frame table.
	ErrFrameDigest = wrapErr(ErrCorrupt, "delta: frame digest mismatch")
	// ErrFrameDecode is returned when a frame does not decompress to
	// exactly its raw length.
	ErrFrameDecode = wrapErr(ErrCorrupt, "delta: frame does not decompress")
	// ErrOpEncoding is returned for a malformed operation list: a bad or
	// non-minimal varint, an operation of length zero, a list that
	// overruns the frame.
	ErrOpEncoding = wrapErr(ErrCorrupt, "delta: malformed operation")
	// ErrSourceRange is returned for an operation that reads outside the
	// source image.
	ErrSourceRange = wrapErr(ErrCorrupt, "delta: operation reads outside the source")
	// ErrFrameOutput is returned when a frame's operations do not produce
	// exactly the frame's output or do not use exactly its data.
	ErrFrameOutput = wrapErr(ErrCorrupt, "delta: frame output length mismatch")
	// ErrTargetDigest is returned by Apply when the output does not hash to
	// the target digest of the header: nothing may be committed.
	ErrTargetDigest = wrapErr(ErrCorrupt, "delta: result digest mismatch")
)

// Errors of use.
var (
	// ErrWrongSource is returned when the source image is not the one the
	// delta was made from (size or SHA-256): the device must take the full
	// image. Apply returns it before it writes anything.
	ErrWrongSource = errors.New("delta: delta does not apply to this source image")
	// ErrCheckpoint is returned for a checkpoint that is malformed or
	// belongs to another delta: start the apply again from the beginning.
	ErrCheckpoint = errors.New("delta: unusable checkpoint")
	// ErrInvalidOption is returned for a bad option or argument.
	ErrInvalidOption = errors.New("delta: invalid option")
	// ErrDiff is returned by Make when computing the difference fails.
	ErrDiff = errors.New("delta: computing the difference failed")
)

type wrappedError struct {
	msg    string
	parent error
}

func (e *wrappedError) Error() string { return e.msg }
func (e *wrappedError) Unwrap() error { return e.parent }

func wrapErr(parent error, msg string) error { return &wrappedError{msg: msg, parent: parent} }
