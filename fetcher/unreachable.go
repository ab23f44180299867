package fetcher

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
)

// unreachable reports whether err shows only that a source could not be
// reached: it wraps ErrUnreachable, a network error (*net.OpError,
// *net.DNSError, a timeout, net.ErrClosed, a connection refused, reset,
// aborted or unreachable errno, a connection cut mid-transfer), and no
// sign that the source or its data are bad (ErrBadChunk, ErrChunkTable,
// ErrCannotServe, ErrStalled, ErrDigest, ErrSink).
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	for _, bad := range []error{ErrBadChunk, ErrChunkTable, ErrCannotServe, ErrStalled, ErrDigest, ErrSink} {
		if errors.Is(err, bad) {
			return false
		}
	}
	if errors.Is(err, ErrUnreachable) {
		return true
	}
	var (
		op  *net.OpError
		dns *net.DNSError
		ne  net.Error
	)
	switch {
	case errors.As(err, &op), errors.As(err, &dns):
		return true
	case errors.As(err, &ne) && ne.Timeout():
		return true
	}
	for _, e := range []error{net.ErrClosed, io.ErrUnexpectedEOF, syscall.ECONNREFUSED, syscall.ECONNRESET,
		syscall.ECONNABORTED, syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EPIPE, syscall.ETIMEDOUT} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// noSourceError is ErrNoSource with every source's failure: it matches
// ErrNoSource and each cause with errors.Is, and ErrUnreachable when
// there is at least one cause and every cause shows only that its source
// could not be reached. It prints on one line.
type noSourceError struct {
	causes  []error
	offline bool
}

func newNoSourceError(causes []error) error {
	e := &noSourceError{causes: append([]error(nil), causes...), offline: len(causes) > 0}
	for _, c := range causes {
		if !unreachable(c) {
			e.offline = false
		}
	}
	return e
}

func (e *noSourceError) Error() string {
	var b strings.Builder
	b.WriteString(ErrNoSource.Error())
	if e.offline {
		b.WriteString(" (unreachable)")
	}
	for i, err := range e.causes {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

// Unwrap returns ErrNoSource, ErrUnreachable when every cause is a
// connectivity failure, and the causes. A cause that itself wraps
// ErrUnreachable is hidden behind a wrapper that does not, so that the
// result matches ErrUnreachable only when all causes do.
func (e *noSourceError) Unwrap() []error {
	out := []error{ErrNoSource}
	if e.offline {
		out = append(out, ErrUnreachable)
	}
	for _, c := range e.causes {
		if !e.offline && errors.Is(c, ErrUnreachable) {
			c = opaque{c}
		}
		out = append(out, c)
	}
	return out
}

// opaque hides a cause's ErrUnreachable from errors.Is while keeping the
// sentinels that describe bad data (ErrBadChunk, ErrChunkTable, ...)
// reachable.
type opaque struct{ err error }

func (o opaque) Error() string { return o.err.Error() }

func (o opaque) Is(target error) bool {
	return target != ErrUnreachable && errors.Is(o.err, target)
}
