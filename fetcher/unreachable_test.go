package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"syscall"
	"testing"
)

// TestUnreachableClassification pins which failures show only that a
// source could not be reached (they do not count against the update) and
// which show that the source or its data are bad.
func TestUnreachableClassification(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{}}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"sentinel", fmt.Errorf("transport down: %w", ErrUnreachable), true},
		{"op-error", fmt.Errorf("publish: %w", refused), true},
		{"econnrefused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{"econnreset", syscall.ECONNRESET, true},
		{"net-closed", fmt.Errorf("write: %w", net.ErrClosed), true},
		{"cut-mid-body", fmt.Errorf("read body: %w", io.ErrUnexpectedEOF), true},
		{"timeout", fmt.Errorf("probe: %w", context.DeadlineExceeded), true},
		{"stalled", fmt.Errorf("%w: no chunk", ErrStalled), false},
		{"bad-chunk", fmt.Errorf("%w: hash", ErrBadChunk), false},
		{"bad-chunk-then-cut", fmt.Errorf("%w (2 chunks dropped: %w)", syscall.ECONNRESET, ErrBadChunk), false},
		{"table", fmt.Errorf("%w: digest", ErrChunkTable), false},
		{"not-found", fmt.Errorf("%w: GET: 404 Not Found", ErrCannotServe), false},
		{"http-500", errors.New("GET fw.bin: 500 Internal Server Error"), false},
		{"sink", fmt.Errorf("%w: flash", ErrSink), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := unreachable(tc.err); got != tc.want {
				t.Errorf("unreachable(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestNoSourceUnreachable checks that ErrNoSource matches ErrUnreachable
// only when every cause is a connectivity failure.
func TestNoSourceUnreachable(t *testing.T) {
	cut := fmt.Errorf("broker: %w", syscall.ECONNREFUSED)
	marked := fmt.Errorf("broker: %w", ErrUnreachable)
	bad := fmt.Errorf("http: %w", ErrChunkTable)
	for _, tc := range []struct {
		name   string
		causes []error
		want   bool
	}{
		{"none", nil, false},
		{"all-cut", []error{cut, marked}, true},
		{"one-bad", []error{cut, bad}, false},
		{"marked-and-bad", []error{marked, bad}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := newNoSourceError(tc.causes)
			if !errors.Is(err, ErrNoSource) {
				t.Errorf("%v does not match ErrNoSource", err)
			}
			if got := errors.Is(err, ErrUnreachable); got != tc.want {
				t.Errorf("errors.Is(%v, ErrUnreachable) = %v, want %v", err, got, tc.want)
			}
			for _, c := range tc.causes {
				if errors.Is(c, ErrChunkTable) && !errors.Is(err, ErrChunkTable) {
					t.Errorf("%v lost its cause ErrChunkTable", err)
				}
			}
		})
	}
}

// TestFetchUnreachable fetches from sources that cannot be reached (an
// HTTP server that is gone) and from one that answers "not found": only
// the first fails with ErrUnreachable.
func TestFetchUnreachable(t *testing.T) {
	fx := newFixture(t, 4*testChunk, testChunk, 21)
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL + "/fw.bin"
	gone.Close() // connections are refused from now on
	notFound := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notFound.Close)
	missingFile := NewFileSource(filepath.Join(t.TempDir(), "missing"), 0)
	for _, tc := range []struct {
		name string
		srcs []Source
		want bool
	}{
		{"gone", []Source{NewHTTPSource(goneURL, 0, nil)}, true},
		{"gone-and-no-file", []Source{NewHTTPSource(goneURL, 0, nil), missingFile}, true},
		{"not-found", []Source{NewHTTPSource(notFound.URL+"/fw.bin", 0, nil)}, false},
		{"no-file", []Source{missingFile}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newFetcher(t, t.TempDir(), tc.srcs...).Fetch(context.Background(), fx.im, Plan{}, newMemSink(len(fx.img)))
			if !errors.Is(err, ErrNoSource) {
				t.Fatalf("err = %v, want ErrNoSource", err)
			}
			if got := errors.Is(err, ErrUnreachable); got != tc.want {
				t.Errorf("errors.Is(%v, ErrUnreachable) = %v, want %v", err, got, tc.want)
			}
		})
	}
}
