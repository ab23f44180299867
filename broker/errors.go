package broker

import "errors"

// Sentinel errors beyond those declared with the Transport interface.
var (
	// ErrBadCredentials: a credential entry or file is malformed.
	ErrBadCredentials = errors.New("broker: bad credentials")
	// ErrServerClosed: the embedded server was shut down.
	ErrServerClosed = errors.New("broker: server closed")
	// ErrBadServerConfig: an embedded server configuration is unusable.
	ErrBadServerConfig = errors.New("broker: bad server config")
	// errNoticeStreamMissing: a direct get of a notice got no answer or
	// "no responders": the notice stream does not exist (yet), or does not
	// allow direct gets. The read is retried.
	errNoticeStreamMissing = errors.New("broker: notice stream not available")
)
