package suit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
)

// fakeTarget is an in-memory device that records every call.
type fakeTarget struct {
	id        Identity
	comps     map[int][]byte
	sources   map[string][]byte // URI ("" = default source) -> payload
	slots     map[int]uint64
	failFetch map[string]error
	calls     []string
}

func newFake() *fakeTarget {
	return &fakeTarget{
		id:      Identity{VendorID: testVendor, ClassIDs: [][]byte{testClass}},
		comps:   map[int][]byte{},
		sources: map[string][]byte{},
	}
}

func (f *fakeTarget) log(format string, a ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
}

func (f *fakeTarget) Identity(context.Context) (Identity, error) {
	f.log("identity")
	return f.id, nil
}

func (f *fakeTarget) Fetch(_ context.Context, idx int, p *Params) (io.ReadCloser, error) {
	uri := ""
	if p.URI != nil {
		uri = *p.URI
	}
	f.log("fetch %d %s", idx, uri)
	if err := f.failFetch[uri]; err != nil {
		return nil, err
	}
	b, ok := f.sources[uri]
	if !ok {
		return nil, fmt.Errorf("fake: no source %q", uri)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (f *fakeTarget) Open(_ context.Context, idx int) (io.ReadCloser, error) {
	f.log("open %d", idx)
	b, ok := f.comps[idx]
	if !ok {
		return nil, errors.New("fake: empty component")
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (f *fakeTarget) Write(_ context.Context, idx int, _ *Params) (ComponentWriter, error) {
	f.log("write %d", idx)
	return &fakeWriter{f: f, idx: idx}, nil
}

func (f *fakeTarget) Invoke(_ context.Context, idx int, _ *Params) error {
	f.log("invoke %d", idx)
	return nil
}

type fakeWriter struct {
	f   *fakeTarget
	idx int
	buf bytes.Buffer
}

func (w *fakeWriter) Write(b []byte) (int, error) { return w.buf.Write(b) }
func (w *fakeWriter) Commit() error {
	w.f.log("commit %d (%d bytes)", w.idx, w.buf.Len())
	w.f.comps[w.idx] = bytes.Clone(w.buf.Bytes())
	return nil
}
func (w *fakeWriter) Abort() error { w.f.log("abort %d", w.idx); return nil }

// matcherTarget also answers image-match itself (as a bootloader with a
// cached digest would), so vectors whose digests are sample patterns run.
type matcherTarget struct {
	*fakeTarget
	mismatch map[int]bool
}

func (m *matcherTarget) MatchImage(_ context.Context, idx int, d Digest, size *uint64) (bool, error) {
	sz := "-"
	if size != nil {
		sz = fmt.Sprint(*size)
	}
	m.log("match %d %x %s", idx, d.Bytes[:4], sz)
	return !m.mismatch[idx], nil
}

// extTarget handles custom commands and slots.
type extTarget struct {
	*fakeTarget
}

func (e *extTarget) Command(_ context.Context, idx int, c Command, _ *Params) error {
	e.log("ext %d %s", idx, c.Name())
	if c.Label == -1 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrUnknownCommand, c.Name())
}

func (e *extTarget) Slot(_ context.Context, idx int) (uint64, error) {
	e.log("slot %d", idx)
	return e.slots[idx], nil
}
