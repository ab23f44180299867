package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
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
	// col takes the parity chunks of a coded table; rebuilt counts the
	// chunks rebuilt from them, badParity the parity chunks refused.
	col                *blockcode.Collector
	rebuilt, badParity int
}

// lossModel decides drops: independent per device, or correlated (the
// same chunks lost for every device); with burst, a device's losses come
// in runs (a two-state Gilbert-Elliott channel, mean run 8 messages, the
// same mean rate).
type lossModel struct {
	rate       float64
	correlated bool
	burst      bool
	active     atomic.Bool
}

func (l *lossModel) dropper(dev string) func(string, []byte) bool {
	h := fnv.New64a()
	h.Write([]byte(dev))
	rng := rand.New(rand.NewPCG(h.Sum64(), 7))
	var mu sync.Mutex
	bad := false
	return func(_ string, payload []byte) bool {
		if !l.active.Load() || l.rate == 0 {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if l.burst {
			const run = 8.0
			if bad {
				bad = rng.Float64() >= 1/run
			} else {
				bad = rng.Float64() < l.rate/(1-l.rate)/run
			}
			return bad
		}
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
	if table.Coded() {
		var err error
		if d.col, err = blockcode.NewCollector(table, 0); err != nil {
			t.Fatal(err)
		}
	}
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

func (d *downloader) onChunk(ctx context.Context, m broker.Message) {
	if d.col != nil && schemas.IsParityChunk(m.Payload) {
		d.onParity(ctx, m.Payload)
		return
	}
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
		if d.col != nil {
			d.rebuild(context.Background(), d.table.BlockOf(c.Index))
		}
	}
}

// onParity keeps a verified parity chunk and rebuilds its block once it
// holds as many as the block lacks, as fetcher.BrokerSource does.
func (d *downloader) onParity(ctx context.Context, b []byte) {
	var p schemas.ParityChunk
	if schemas.Decode(b, &p) != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	kept, err := d.col.Add(&p, d.lacking(p.Block))
	if err != nil {
		d.badParity++
		return
	}
	if kept {
		d.rebuild(ctx, p.Block)
	}
}

func (d *downloader) lacking(b uint32) int {
	first, count := d.table.BlockChunks(b)
	lack := 0
	for i := first; i < first+count; i++ {
		if !d.have.Has(i) {
			lack++
		}
	}
	return lack
}

// rebuild rebuilds block b once the parity held covers what it lacks.
// Called with d.mu held.
func (d *downloader) rebuild(ctx context.Context, b uint32) {
	lack := d.lacking(b)
	if lack == 0 || d.col.Held(b) < lack {
		return
	}
	err := d.col.Decode(ctx, b, d.have.Has, bytes.NewReader(d.data), func(i uint32, data []byte) error {
		d.have.Set(i)
		copy(d.data[int(i)*int(d.table.ChunkSize):], data)
		d.got++
		d.rebuilt++
		return nil
	})
	if err != nil {
		d.bad++
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

// request asks for every missing chunk with a bitmap (with a coded
// table, those not covered by the parity held, as requestMsg).
func (d *downloader) request(t testing.TB) {
	r := d.requestMsg()
	b, err := schemas.Encode(r)
	if err != nil {
		t.Fatalf("encode request: %v", err)
	}
	qt, _ := d.topics.ChunkRequestsFrom(d.id)
	d.tr.Publish(context.Background(), qt, b, broker.PublishOptions{Family: broker.FamilyChunkRequest})
}
