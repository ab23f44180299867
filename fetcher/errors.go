package fetcher

import "errors"

// Sentinel errors. Errors returned by this package wrap one of them with
// details; match them with errors.Is.
var (
	// ErrBadImage: the Image description is unusable (digest length, zero
	// size, chunk size out of range, too many chunks).
	ErrBadImage = errors.New("fetcher: bad image description")
	// ErrChunkTable: a chunk table did not match the signed digest, did not
	// describe the image, or could not be decoded.
	ErrChunkTable = errors.New("fetcher: chunk table rejected")
	// ErrBadChunk: a chunk did not match its table entry (or named another
	// image, or an index out of range). It is dropped and fetched again.
	ErrBadChunk = errors.New("fetcher: bad chunk")
	// ErrDigest: every chunk matched the table but the whole image does not
	// match the signed image digest.
	ErrDigest = errors.New("fetcher: image digest mismatch")
	// ErrCannotServe: a source cannot serve this image.
	ErrCannotServe = errors.New("fetcher: source cannot serve image")
	// ErrNoSource: no source could deliver the image (all failed or none
	// can serve it).
	ErrNoSource = errors.New("fetcher: no source could deliver the image")
	// ErrUnreachable: a source could not be reached (no connectivity: the
	// transport is disconnected, the connection was refused, reset or
	// timed out). It says nothing about the source or its data; the same
	// source may serve once connectivity returns. An ErrNoSource error
	// matches it only when every source that was tried failed this way.
	ErrUnreachable = errors.New("fetcher: source unreachable")
	// ErrStalled: a source stopped delivering wanted chunks.
	ErrStalled = errors.New("fetcher: source stalled")
	// ErrSink: writing to the sink failed; this is not a source failure and
	// stops the fetch.
	ErrSink = errors.New("fetcher: sink write failed")
	// ErrState: the persisted progress file is unreadable or belongs to
	// another image; it is discarded and the fetch starts over.
	ErrState = errors.New("fetcher: bad progress state")
	// ErrConfig: a configuration value is invalid.
	ErrConfig = errors.New("fetcher: invalid configuration")
)
