package testutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// ChunkServer is a test-side stand-in for the publisher's chunk service:
// it answers chunk requests for one image over any broker.Transport,
// sending the requested chunks (and the chunk table when asked) to the
// request's reply address, and counts what it served so tests can prove
// that nothing already held is fetched again. Faults are injected through
// the hook fields, which must be set before Start.
type ChunkServer struct {
	Transport broker.Transport
	Topics    schemas.Topics
	Image     []byte
	Table     *schemas.ChunkTable
	// TableBytes overrides the encoded table served (to serve a bad one).
	TableBytes []byte
	// Corrupt, when it returns true, flips a byte of chunk i on its n-th
	// serving (n counts from 0).
	Corrupt func(i uint32, n int) bool
	// Drop, when it returns true, skips chunk i on its n-th serving.
	Drop func(i uint32, n int) bool
	// Extra, when set, is published to the reply address before the
	// chunks of every request (garbage, foreign chunks...).
	Extra func(req *schemas.ChunkRequest) [][]byte

	mu       sync.Mutex
	served   map[uint32]int
	requests int
	tables   int
	bad      int
	sub      broker.Subscription
}

// Start subscribes to every device's chunk request topic (as a publisher
// does) and answers the requests for its image; requests for other images
// are left alone.
func (s *ChunkServer) Start(ctx context.Context) error {
	if s.TableBytes == nil {
		b, err := schemas.Encode(s.Table)
		if err != nil {
			return err
		}
		s.TableBytes = b
	}
	s.served = map[uint32]int{}
	rt := s.Topics.ChunkRequestsAll()
	sub, err := s.Transport.Subscribe(ctx, rt, s.handle, broker.SubscribeOptions{Family: broker.FamilyChunkRequest})
	if err != nil {
		return err
	}
	s.sub = sub
	return nil
}

// Stop unsubscribes.
func (s *ChunkServer) Stop(ctx context.Context) error {
	if s.sub == nil {
		return nil
	}
	return s.sub.Unsubscribe(ctx)
}

func (s *ChunkServer) handle(ctx context.Context, m broker.Message) {
	var req schemas.ChunkRequest
	if err := schemas.Decode(m.Payload, &req); err != nil {
		s.mu.Lock()
		s.bad++
		s.mu.Unlock()
		return
	}
	if !bytes.Equal(req.Image, s.Table.Image) {
		return // another image's (another server's)
	}
	reply := schemas.Topic{MQTT: req.ReplyTo, NATS: req.ReplyTo}
	pub := func(b []byte) error {
		return s.Transport.Publish(ctx, reply, b, broker.PublishOptions{Family: broker.FamilyChunk})
	}
	s.mu.Lock()
	s.requests++
	if req.WantTable {
		s.tables++
	}
	s.mu.Unlock()
	if s.Extra != nil {
		for _, b := range s.Extra(&req) {
			_ = pub(b)
		}
	}
	if req.WantTable {
		_ = pub(s.TableBytes)
	}
	n := s.Table.NumChunks()
	for i := uint32(0); i < n && int(i/8) < len(req.Bitmap); i++ {
		if req.Bitmap[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		s.mu.Lock()
		k := s.served[i]
		s.served[i]++
		s.mu.Unlock()
		if s.Drop != nil && s.Drop(i, k) {
			continue
		}
		off := int(i) * int(s.Table.ChunkSize)
		data := s.Image[off : off+s.Table.ChunkLen(i)]
		if s.Corrupt != nil && s.Corrupt(i, k) {
			data = append([]byte(nil), data...)
			data[len(data)/2] ^= 0x5a
		}
		b, err := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: s.Table.Image, Index: i, Data: data})
		if err != nil {
			continue
		}
		if err := pub(b); err != nil && !errors.Is(err, context.Canceled) {
			return
		}
	}
}

// Served returns how many times each chunk was served (dropped ones count).
func (s *ChunkServer) Served() map[uint32]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[uint32]int, len(s.served))
	for k, v := range s.served {
		out[k] = v
	}
	return out
}

// Counts returns the number of valid chunk requests, table requests and
// undecodable requests received (requests for other images are not
// counted).
func (s *ChunkServer) Counts() (requests, tables, bad int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, s.tables, s.bad
}

// ServedTwice returns the chunks served more than once, for error messages.
func (s *ChunkServer) ServedTwice() []string {
	var out []string
	for i, n := range s.Served() {
		if n > 1 {
			out = append(out, fmt.Sprintf("%d(x%d)", i, n))
		}
	}
	return out
}
