package publisher

import "errors"

// Sentinel errors. Operations wrap them with %w and a message naming what
// was wrong; match them with errors.Is. The HTTP and NATS APIs map them to
// status codes and schemas.ErrCode values.
var (
	// ErrInvalid: the request is malformed or breaks a rule (bad id, bad
	// spec, unknown scope). HTTP 400.
	ErrInvalid = errors.New("publisher: invalid request")
	// ErrNotFound: the image, device, campaign or key does not exist. HTTP 404.
	ErrNotFound = errors.New("publisher: not found")
	// ErrExists: the object to create already exists. HTTP 409.
	ErrExists = errors.New("publisher: already exists")
	// ErrState: the operation is impossible in the campaign's current state
	// (for example resume of a running campaign). HTTP 409.
	ErrState = errors.New("publisher: wrong state")
	// ErrUnauthorized: no API key, or an unknown or revoked one. HTTP 401.
	ErrUnauthorized = errors.New("publisher: unauthorized")
	// ErrForbidden: the key lacks the scope the operation needs. HTTP 403.
	ErrForbidden = errors.New("publisher: forbidden")
	// ErrTooLarge: an upload or request body exceeds its limit. HTTP 413.
	ErrTooLarge = errors.New("publisher: too large")
	// ErrNoSigner: a campaign without an envelope was created on a server
	// that has no manifest signing key, or any campaign on a server that
	// has no notice signing key. HTTP 400.
	ErrNoSigner = errors.New("publisher: no signer configured")
	// ErrConflict: a compare-and-set kept losing to concurrent writers.
	ErrConflict = errors.New("publisher: concurrent update conflict")
	// ErrRunning: Run was called on a Publisher that already ran, or
	// was closed.
	ErrRunning = errors.New("publisher: Run called twice")
)
