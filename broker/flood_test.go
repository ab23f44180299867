package broker_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestSlowChunkHandlerBounded floods a chunk subscription whose handler
// is stuck with chunks and a few chunk tables, over each broker: the
// subscription holds at most broker.MaxQueuedChunks chunks (its memory
// stays bounded; the rest are dropped, to be repaired like any QoS 0
// loss), and once the handler moves again it gets every table, in order.
func TestSlowChunkHandlerBounded(t *testing.T) {
	for _, b := range brokers() {
		t.Run(b.name, func(t *testing.T) {
			url := b.shared(t)
			topics := testutil.UniqueTopics(t)
			pub := dial(t, url, topics, "pub-"+b.name)
			dev := dial(t, url, topics, "dev-"+b.name)
			digest := strings.Repeat("ab", 32)
			ct, err := topics.Chunks(digest)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			entered := make(chan struct{}, 1)
			block := make(chan struct{})
			tables := make(chan uint64, 100)
			sub, err := dev.Subscribe(ctx, ct, func(_ context.Context, m broker.Message) {
				select {
				case entered <- struct{}{}:
				default:
				}
				<-block
				var tb schemas.ChunkTable
				if schemas.Decode(m.Payload, &tb) == nil {
					tables <- tb.ImageSize
				}
			}, broker.SubscribeOptions{Family: broker.FamilyChunk})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				select {
				case <-block:
				default:
					close(block)
				}
			}()
			send := func(b []byte) {
				t.Helper()
				if err := pub.Publish(ctx, ct, b, broker.PublishOptions{Family: broker.FamilyChunk}); err != nil {
					t.Fatal(err)
				}
			}
			table := func(size uint64) []byte {
				b, err := schemas.Encode(&schemas.ChunkTable{V: schemas.Version, Image: bytes.Repeat([]byte{0xab}, 32), ImageSize: size, ChunkSize: 16 << 10, Hashes: make([]schemas.Digest, 1)})
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			// The first table is taken by the handler, which then sticks.
			// One copy only: Subscribe returned once the broker had the
			// subscription (SUBACK, NATS flush), so it arrives; a second
			// copy sent because the first was slow to arrive (a loaded
			// machine) would be one more table queued, out of order.
			send(table(1))
			select {
			case <-entered:
			case <-ctx.Done():
				t.Fatal("the first table never reached the handler")
			}
			// Chunk publishes are QoS 0 and not flushed: a real wave
			// cannot wait on the subscriber either. The flood is three
			// times the bound, and with the tables stays under what the
			// embedded MQTT broker holds for one client
			// (MaximumClientWritesPending, 1024): beyond that the broker
			// drops QoS 0 messages of any kind when its writer to the
			// device lags, a loss this test is not about.
			const nChunks, nTables = 3 * broker.MaxQueuedChunks, 10
			data := make([]byte, 16<<10)
			for i := range nChunks {
				cb, err := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: bytes.Repeat([]byte{0xab}, 32), Index: uint32(i), Data: data})
				if err != nil {
					t.Fatal(err)
				}
				send(cb)
				if i%(nChunks/nTables) == nChunks/nTables-1 {
					send(table(uint64(2 + i/(nChunks/nTables))))
				}
			}
			// Every table reached the dispatcher (tables are never shed);
			// meanwhile the queue never held more than the bound.
			deadline := time.Now().Add(30 * time.Second)
			for {
				chunks, others, dropped := broker.Queued(sub)
				if chunks > broker.MaxQueuedChunks {
					t.Fatalf("%d chunks queued, bound %d", chunks, broker.MaxQueuedChunks)
				}
				if others == nTables {
					t.Logf("%d chunks queued, %d dropped, %d tables", chunks, dropped, others)
					if dropped == 0 {
						t.Errorf("nothing dropped for a flood of %d chunks", nChunks)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after 30s: %d chunks, %d other messages queued, %d dropped; want %d tables", chunks, others, dropped, nTables)
				}
				time.Sleep(10 * time.Millisecond) // polling the queue, not standing in for it
			}
			close(block)
			for k := range nTables + 1 {
				select {
				case got := <-tables:
					if got != uint64(k+1) {
						t.Fatalf("table %d arrived as %d", k+1, got)
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("table %d never handled", k+1)
				}
			}
		})
	}
}
