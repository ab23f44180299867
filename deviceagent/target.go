package deviceagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/firmcast/firmcast/schemas/suit"
)

// target is the SUIT processor's view of the device. The payload is not
// streamed through the processor: Fetch runs the chunked, resumable,
// cost-ranked download straight into the candidate slot (every chunk
// checked against the signed chunk table, the whole image against the
// signed digest), so Write receives no bytes, and image-match uses the
// digest the fetcher verified (ImageMatcher).
type target struct {
	a        *Agent
	m        *suit.Manifest
	fetched  bool
	err      error  // memoised download failure (try-each branches)
	verified []byte // digest verified by the fetcher
	// deltaNote says which delta was applied, or why none was, for the
	// report.
	deltaNote string
}

func (t *target) Identity(ctx context.Context) (suit.Identity, error) { return t.a.cfg.Identity, nil }

// Fetch downloads the image into the candidate slot once; later calls (the
// next try-each branches) return the same outcome.
func (t *target) Fetch(ctx context.Context, idx int, p *suit.Params) (io.ReadCloser, error) {
	if idx != 0 {
		return nil, fmt.Errorf("%w: component %d (this device has one)", suit.ErrUnsupported, idx)
	}
	if info, ok, err := suit.DeltaOf(p); err != nil {
		return nil, err
	} else if ok {
		return t.fetchDelta(ctx, info)
	}
	if !t.fetched && t.err == nil {
		t.err = t.a.download(ctx, t.m)
		if t.err == nil {
			d, _ := t.m.ImageDigest()
			t.verified, t.fetched = d.Bytes, true
		}
	}
	if t.err != nil {
		return nil, t.err
	}
	return io.NopCloser(strings.NewReader("")), nil
}

func (t *target) Open(ctx context.Context, idx int) (io.ReadCloser, error) {
	return nil, fmt.Errorf("%w: reading components back (image-match uses the verified digest)", suit.ErrUnsupported)
}

func (t *target) Write(ctx context.Context, idx int, p *suit.Params) (suit.ComponentWriter, error) {
	if !t.fetched {
		return nil, fmt.Errorf("%w: write without fetch (only fetched payloads are supported)", suit.ErrUnsupported)
	}
	return inPlace{}, nil
}

// Invoke is a no-op during the update procedure: the bootloader invokes.
func (t *target) Invoke(ctx context.Context, idx int, p *suit.Params) error { return nil }

// MatchImage implements suit.ImageMatcher with the fetcher's verified digest.
func (t *target) MatchImage(ctx context.Context, idx int, d suit.Digest, size *uint64) (bool, error) {
	if !t.fetched {
		return false, nil
	}
	want, _ := t.m.ImageSize()
	if size != nil && *size != want {
		return false, nil
	}
	return d.Alg == suit.AlgSHA256 && bytes.Equal(d.Bytes, t.verified), nil
}

// inPlace is the component writer of a payload already written in place.
type inPlace struct{}

func (inPlace) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return 0, errors.New("deviceagent: payload was already written in place")
}
func (inPlace) Commit() error { return nil }
func (inPlace) Abort() error  { return nil }
