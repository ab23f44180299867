package publisher

import (
	"context"
	"encoding/hex"
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// downloader is an in-test device that assembles an image from broadcast
// chunks and requested ones, checking each against the chunk table.
type downloader struct {
	id     string
	tr     *testutil.MemConn
	topics schemas.Topics
	table  *schemas.ChunkTable
	image  []byte
	mu     sync.Mutex
	have   schemas.Bitmap
	data   []byte
	got    int
	bad    int
}

// lossModel decides drops: independent per device, or correlated (the
// same chunks lost for every device).
type lossModel struct {
	rate       float64
	correlated bool
	active     atomic.Bool
}

func (l *lossModel) dropper(dev string) func(string, []byte) bool {
	h := fnv.New64a()
	h.Write([]byte(dev))
	rng := rand.New(rand.NewPCG(h.Sum64(), 7))
	var mu sync.Mutex
	return func(_ string, payload []byte) bool {
		if !l.active.Load() || l.rate == 0 {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		return rng.Float64() < l.rate
	}
}

// install sets the correlated loss on the broker (one decision per message).
func (l *lossModel) install(hub *testutil.MemHub) {
	rng := rand.New(rand.NewPCG(1, 2))
	var mu sync.Mutex
	hub.DropChunk = func([]byte) bool {
		if !l.active.Load() || !l.correlated {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		return rng.Float64() < l.rate
	}
}

func newDownloader(t testing.TB, hub *testutil.MemHub, topics schemas.Topics, id string, table *schemas.ChunkTable, loss *lossModel) *downloader {
	t.Helper()
	d := &downloader{id: id, tr: hub.Conn(), topics: topics, table: table, have: schemas.NewBitmap(table.NumChunks()), data: make([]byte, table.ImageSize)}
	if loss != nil && !loss.correlated {
		d.tr.SetDrop(loss.dropper(id))
	}
	ct, _ := topics.Chunks(hex.EncodeToString(table.Image))
	rt, _ := topics.ChunkReply(id)
	for _, tp := range []schemas.Topic{ct, rt} {
		if _, err := d.tr.Subscribe(context.Background(), tp, d.onChunk, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { d.tr.Close(context.Background()) })
	return d
}

func (d *downloader) onChunk(_ context.Context, m broker.Message) {
	var c schemas.Chunk
	if err := schemas.Decode(m.Payload, &c); err != nil {
		return // a chunk table, for instance
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.table.VerifyChunk(c.Index, c.Data) != nil {
		d.bad++
		return
	}
	if !d.have.Has(c.Index) {
		d.have.Set(c.Index)
		copy(d.data[int(c.Index)*int(d.table.ChunkSize):], c.Data)
		d.got++
	}
}

func (d *downloader) complete() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.got == int(d.table.NumChunks())
}

// allComplete reports whether every downloader holds the whole image.
func allComplete(devs []*downloader) func() bool {
	return func() bool {
		for _, d := range devs {
			if !d.complete() {
				return false
			}
		}
		return true
	}
}

// request asks for every missing chunk with a bitmap.
func (d *downloader) request(t testing.TB) {
	d.mu.Lock()
	want := schemas.NewBitmap(d.table.NumChunks())
	for i := range d.table.NumChunks() {
		if !d.have.Has(i) {
			want.Set(i)
		}
	}
	d.mu.Unlock()
	rt, _ := d.topics.ChunkReply(d.id)
	r := &schemas.ChunkRequest{V: schemas.Version, Image: d.table.Image, ChunkSize: d.table.ChunkSize, Bitmap: want, ReplyTo: rt.NATS, Requester: d.id}
	b, err := schemas.Encode(r)
	if err != nil {
		t.Fatalf("encode request: %v", err)
	}
	qt, _ := d.topics.ChunkRequestsFrom(d.id)
	d.tr.Publish(context.Background(), qt, b, broker.PublishOptions{Family: broker.FamilyChunkRequest})
}
