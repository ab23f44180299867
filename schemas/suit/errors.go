package suit

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package wraps one of them
// (with the element, command or key named) and is matched with errors.Is.
var (
	// ErrMalformed: the bytes are not a well-formed SUIT structure (not
	// CBOR, wrong type, missing required element, trailing bytes, limits).
	ErrMalformed = errors.New("suit: malformed")
	// ErrTruncated: the input ends in the middle of a CBOR item.
	ErrTruncated = errors.New("suit: truncated")
	// ErrDuplicateKey: a CBOR map holds the same key twice.
	ErrDuplicateKey = errors.New("suit: duplicate map key")
	// ErrUnsupported: a critical element, algorithm or parameter this
	// implementation does not support (named in the message).
	ErrUnsupported = errors.New("suit: unsupported")
	// ErrDigestMismatch: the manifest does not match the digest in the
	// authentication wrapper.
	ErrDigestMismatch = errors.New("suit: manifest digest mismatch")
	// ErrSeveredDigest: a severable member carried in the envelope does not
	// match the digest the manifest holds for it.
	ErrSeveredDigest = errors.New("suit: severed member digest mismatch")
	// ErrSeveredMissing: a sequence that must run was severed and its body
	// is not in the envelope.
	ErrSeveredMissing = errors.New("suit: severed member missing")
	// ErrUntrusted: no authentication block verifies with a trusted key
	// (wrong key, altered signature, or no trust anchor configured).
	ErrUntrusted = errors.New("suit: no signature by a trusted key")
	// ErrNotVerified: the processor was handed a manifest that Verify did
	// not return.
	ErrNotVerified = errors.New("suit: manifest not verified")
	// ErrUnknownCommand: a sequence being run holds a command this
	// processor does not know (and the Target does not handle).
	ErrUnknownCommand = errors.New("suit: unknown command")
	// ErrConditionFailed: a condition did not hold.
	ErrConditionFailed = errors.New("suit: condition failed")
	// ErrAborted: the manifest ran suit-condition-abort.
	ErrAborted = errors.New("suit: aborted by manifest")
	// ErrRollback: the manifest's sequence number is lower than the
	// installed one.
	ErrRollback = errors.New("suit: rollback refused")
	// ErrExpired: the use-before time has passed (freeze attack defence).
	ErrExpired = errors.New("suit: manifest expired")
	// ErrParameter: a command needs a parameter that is not set, or a
	// parameter has a value the command cannot use.
	ErrParameter = errors.New("suit: missing or bad parameter")
	// ErrTooLarge: content exceeds the image size or a package limit.
	ErrTooLarge = errors.New("suit: too large")
	// ErrKey: a key file or key type is unusable.
	ErrKey = errors.New("suit: bad key")
)

// Firmware encryption errors (draft-ietf-suit-firmware-encryption). Each
// names the stage that refused an encrypted payload; nothing decrypted is
// committed to a component when any of them is returned.
var (
	// ErrUnknownAlgorithm: a content-encryption or key-distribution
	// algorithm this implementation does not support. It wraps
	// ErrUnsupported, so processing ends (no try-each fallback).
	ErrUnknownAlgorithm = fmt.Errorf("%w: encryption algorithm", ErrUnsupported)
	// ErrNoRecipient: no recipient of an encrypted payload is for this
	// device (every one names another key, or the device has no
	// decryption keys).
	ErrNoRecipient = errors.New("suit: no recipient for this device's keys")
	// ErrKeyUnwrap: a recipient names one of the device's keys but the
	// wrapped content key does not unwrap with it (wrong key-encryption
	// key, wrong device private key, a tampered or swapped wrapped key or
	// ephemeral key), or unwraps to a key of the wrong size.
	ErrKeyUnwrap = errors.New("suit: content key does not unwrap")
	// ErrDecrypt: an authenticated ciphertext (AES-GCM) does not verify
	// under the content key: tampered ciphertext, tag, IV or protected
	// header.
	ErrDecrypt = errors.New("suit: ciphertext does not authenticate")
	// ErrPlaintextDigest: decrypted content does not match the signed
	// image digest of its component (AES-CTR has no tag of its own: this
	// is its authentication).
	ErrPlaintextDigest = errors.New("suit: decrypted content does not match the signed image digest")
)
