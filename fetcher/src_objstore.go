package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"
)

// ObjectStoreSource serves an image from a NATS JetStream object store,
// for gateways with NATS access. The image object is named by the image's
// lowercase hex digest, its chunk table by that name plus TableSuffix.
//
// With a JetStream handle (WithJetStream), Fetch reads ranges: it starts
// at the object chunk holding the first wanted byte, fetching the stored
// chunk messages by sequence, so a resumed download does not transfer
// again what the device holds before its first missing chunk. Without one,
// or when the object's chunks are not contiguous in the stream, or the
// server cannot get messages by subject, it reads the object from its
// start and discards the chunks already held.
type ObjectStoreSource struct {
	store  jetstream.ObjectStore
	js     jetstream.JetStream
	bucket string
	name   string
	price  float64
}

// NewObjectStoreSource returns a source reading from store; bucket names
// it in logs and rankings.
func NewObjectStoreSource(store jetstream.ObjectStore, bucket string, price float64) *ObjectStoreSource {
	return &ObjectStoreSource{store: store, bucket: bucket, name: "objstore " + bucket, price: price}
}

// WithJetStream lets the source read ranges through js (the connection the
// object store was opened on). It returns s.
func (s *ObjectStoreSource) WithJetStream(js jetstream.JetStream) *ObjectStoreSource {
	s.js = js
	return s
}

func (s *ObjectStoreSource) Name() string   { return s.name }
func (s *ObjectStoreSource) Kind() string   { return "objstore" }
func (s *ObjectStoreSource) Price() float64 { return s.price }

// Probe looks the object up: CanServe when it exists with the image's size.
func (s *ObjectStoreSource) Probe(ctx context.Context, im Image) (Availability, error) {
	info, err := s.store.GetInfo(ctx, im.Hex())
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return CannotServe, nil
	}
	if err != nil {
		return CannotServe, err
	}
	if info.Deleted || info.Size != im.Size {
		return CannotServe, nil
	}
	return CanServe, nil
}

// Table reads the chunk table object, bounded by its size cap.
func (s *ObjectStoreSource) Table(ctx context.Context, im Image) ([]byte, error) {
	info, err := s.store.GetInfo(ctx, im.Hex()+TableSuffix)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: no chunk table object", ErrCannotServe)
	}
	if err != nil {
		return nil, err
	}
	if info.Size > uint64(maxTableSize) {
		return nil, fmt.Errorf("%w: chunk table object is %d bytes, max %d", ErrChunkTable, info.Size, maxTableSize)
	}
	r, err := s.store.Get(ctx, im.Hex()+TableSuffix)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return readBounded(r, maxTableSize)
}

// Fetch streams the object from its start, delivering wanted chunks and
// discarding the others, through one reused chunk buffer.
func (s *ObjectStoreSource) Fetch(ctx context.Context, im Image, want Chunks, deliver Deliver) error {
	first := want.Next(0)
	if first < 0 {
		return nil
	}
	last := first
	for i := first; i >= 0; i = want.Next(i + 1) {
		last = i
	}
	var r io.Reader
	from := 0
	if rr, err := s.ranged(ctx, im, first); err == nil {
		r, from = rr, first
	} else {
		res, err := s.store.Get(ctx, im.Hex())
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("%w: object %s not found", ErrCannotServe, im.Hex())
		}
		if err != nil {
			return err
		}
		defer res.Close()
		r = res
	}
	buf := make([]byte, im.ChunkSize)
	var bad error
	for i := from; i <= last; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:im.ChunkLen(i)]
		if _, err := io.ReadFull(r, b); err != nil {
			return fmt.Errorf("object %s: chunk %d: %w", im.Hex()[:16], i, err)
		}
		if !want.Has(i) {
			continue
		}
		if err := deliver(i, b); err != nil {
			if errors.Is(err, ErrSink) {
				return err
			}
			bad = err
		}
	}
	return bad
}

// ranged returns a reader of the object's bytes from image chunk first on,
// reading the stored chunk messages by stream sequence. It fails (and the
// caller reads from the start) without a JetStream handle, when the
// object's chunks are not contiguous in the stream, or when the server
// cannot get a message by subject.
func (s *ObjectStoreSource) ranged(ctx context.Context, im Image, first int) (io.Reader, error) {
	if s.js == nil {
		return nil, errors.New("no jetstream handle")
	}
	info, err := s.store.GetInfo(ctx, im.Hex())
	if err != nil {
		return nil, err
	}
	objChunk := uint64(128 << 10) // nats.go's default object chunk size
	if info.Opts != nil && info.Opts.ChunkSize > 0 {
		objChunk = uint64(info.Opts.ChunkSize)
	}
	if info.Chunks == 0 || info.Size != im.Size {
		return nil, errors.New("object size or chunks do not match")
	}
	st, err := s.js.Stream(ctx, "OBJ_"+s.bucket)
	if err != nil {
		return nil, err
	}
	subj := "$O." + s.bucket + ".C." + info.NUID
	m0, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
	if err != nil {
		return nil, err
	}
	s0 := m0.Sequence
	lastSeq := s0 + uint64(info.Chunks) - 1
	if ml, err := st.GetMsg(ctx, lastSeq, jetstream.WithGetMsgSubject(subj)); err != nil || ml.Sequence != lastSeq {
		return nil, errors.New("object chunks are not contiguous in the stream")
	}
	off := uint64(im.Offset(first))
	k := off / objChunk
	return &seqReader{ctx: ctx, st: st, subj: subj, seq: s0 + k, end: lastSeq, skip: int(off - k*objChunk)}, nil
}

// seqReader reads consecutive stream messages' data as one byte stream.
type seqReader struct {
	ctx  context.Context
	st   jetstream.Stream
	subj string
	seq  uint64 // next message
	end  uint64 // last message
	skip int    // bytes to drop from the first message
	cur  []byte
}

func (r *seqReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.seq > r.end {
			return 0, io.EOF
		}
		m, err := r.st.GetMsg(r.ctx, r.seq, jetstream.WithGetMsgSubject(r.subj))
		if err != nil {
			return 0, err
		}
		if m.Sequence != r.seq {
			return 0, fmt.Errorf("object chunk message %d missing", r.seq)
		}
		r.seq++
		r.cur = m.Data
		if r.skip > 0 {
			n := min(r.skip, len(r.cur))
			r.cur, r.skip = r.cur[n:], r.skip-n
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}
