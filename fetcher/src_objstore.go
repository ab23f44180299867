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
// JetStream object reads are streams from the start of the object, so
// Fetch reads from the first wanted chunk's object start and discards the
// bytes of chunks already held: resuming costs the transfer (not the
// writes) of the prefix before the first missing chunk.
type ObjectStoreSource struct {
	store jetstream.ObjectStore
	name  string
	price float64
}

// NewObjectStoreSource returns a source reading from store; bucket names
// it in logs and rankings.
func NewObjectStoreSource(store jetstream.ObjectStore, bucket string, price float64) *ObjectStoreSource {
	return &ObjectStoreSource{store: store, name: "objstore " + bucket, price: price}
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
	r, err := s.store.Get(ctx, im.Hex())
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("%w: object %s not found", ErrCannotServe, im.Hex())
	}
	if err != nil {
		return err
	}
	defer r.Close()
	last := -1
	for i := want.Next(0); i >= 0; i = want.Next(i + 1) {
		last = i
	}
	buf := make([]byte, im.ChunkSize)
	var bad error
	for i := 0; i <= last; i++ {
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
