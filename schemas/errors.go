package schemas

import "errors"

// Sentinel errors returned (wrapped, with the message and field named) by
// Decode and Validate. Match them with errors.Is.
var (
	// ErrMalformed: the bytes are not valid CBOR for the message type
	// (wrong types, duplicate keys, indefinite lengths, tags, unknown
	// fields, trailing bytes, nesting or size limits exceeded).
	ErrMalformed = errors.New("schemas: malformed message")
	// ErrTooLarge: the encoded message exceeds its type's size cap, or a
	// field exceeds its own limit (envelope, data, text, bitmap...).
	ErrTooLarge = errors.New("schemas: message too large")
	// ErrVersion: the message carries a format version this build does not speak.
	ErrVersion = errors.New("schemas: unsupported message version")
	// ErrInvalid: the message decodes but a field violates the contract
	// (missing, out of range, inconsistent).
	ErrInvalid = errors.New("schemas: invalid message")
	// ErrDigestMismatch: data does not hash to the digest announced for it
	// (ChunkTable.VerifyChunk).
	ErrDigestMismatch = errors.New("schemas: digest mismatch")
)
