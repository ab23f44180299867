package broker

import (
	"context"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

func chunkMsg(t testing.TB, i int) Message {
	t.Helper()
	b, err := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: make([]byte, 32), Index: uint32(i), Data: make([]byte, 1024)})
	if err != nil {
		t.Fatal(err)
	}
	return Message{Payload: b}
}

func parityMsg(t testing.TB, i int) Message {
	t.Helper()
	b, err := schemas.Encode(&schemas.ParityChunk{V: schemas.Version, Image: make([]byte, 32), Block: uint32(i / 32), Index: uint32(i % 32), Data: make([]byte, 1024)})
	if err != nil {
		t.Fatal(err)
	}
	return Message{Payload: b}
}

func tableMsg(t testing.TB, i int) Message {
	t.Helper()
	b, err := schemas.Encode(&schemas.ChunkTable{V: schemas.Version, Image: make([]byte, 32), ImageSize: uint64(i%1024 + 1), ChunkSize: 1024, Hashes: make([]schemas.Digest, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return Message{Payload: b}
}

// TestDispatcherBoundsChunks floods a blocked handler of a chunk
// subscription with chunks, parity chunks and tables: the queue never
// holds more than maxQueuedChunks chunks (parity chunks count as chunks),
// the rest are counted as dropped, and every table still arrives, in
// order. A subscription of another family keeps
// everything.
func TestDispatcherBoundsChunks(t *testing.T) {
	for _, tc := range []struct {
		fam  Family
		shed bool
	}{{FamilyChunk, true}, {FamilyNotice, false}} {
		block := make(chan struct{})
		got := make(chan Message, 100000)
		entered := make(chan struct{}, 1)
		d := newDispatcher(context.Background(), func(_ context.Context, m Message) {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-block
			got <- m
		}, SubscribeOptions{Family: tc.fam})
		const chunks, tables = 5000, 50
		// Chunk 0 is taken by the handler, which then blocks.
		d.enqueue(chunkMsg(t, 0))
		<-entered
		for i := range chunks {
			if i > 0 && i%2 == 0 {
				d.enqueue(chunkMsg(t, i))
			} else if i > 0 {
				d.enqueue(parityMsg(t, i))
			}
			if i%(chunks/tables) == 0 {
				d.enqueue(tableMsg(t, i))
			}
		}
		d.mu.Lock()
		queued, dropped := d.chunks, d.dropped
		d.mu.Unlock()
		if tc.shed && (queued > maxQueuedChunks || queued+int(dropped) != chunks-1) {
			t.Errorf("family %d: %d chunks queued, %d dropped; want at most %d queued, %d in all", tc.fam, queued, dropped, maxQueuedChunks, chunks-1)
		}
		if !tc.shed && (queued != 0 || dropped != 0) {
			t.Errorf("family %d: %d chunks counted, %d dropped; want nothing shed", tc.fam, queued, dropped)
		}
		close(block)
		nt, nc := 0, 0
		for nt < tables || (!tc.shed && nc < chunks) {
			m := <-got
			if !schemas.IsChunk(m.Payload) && !schemas.IsParityChunk(m.Payload) {
				var tb schemas.ChunkTable
				if err := schemas.Decode(m.Payload, &tb); err != nil {
					t.Fatal(err)
				}
				if want := uint64(nt*(chunks/tables)%1024 + 1); tb.ImageSize != want {
					t.Fatalf("table %d out of order: %d, want %d", nt, tb.ImageSize, want)
				}
				nt++
			} else {
				nc++
			}
		}
		d.close()
	}
}

// TestDispatcherMaxQueuedBytes: a chunk subscription's MaxQueuedBytes
// bounds the chunk bytes it queues behind a blocked handler (set above
// the default, the default holds); tables are queued beyond it.
func TestDispatcherMaxQueuedBytes(t *testing.T) {
	one := len(chunkMsg(t, 0).Payload)
	for _, tc := range []struct {
		set, want int
	}{
		{10 * one, 10 * one},
		{10*one + one/2, 10 * one},
		{0, maxQueuedChunkBytes},
		{1 << 30, maxQueuedChunkBytes},
	} {
		block := make(chan struct{})
		entered := make(chan struct{}, 1)
		d := newDispatcher(context.Background(), func(_ context.Context, m Message) {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-block
		}, SubscribeOptions{Family: FamilyChunk, MaxQueuedBytes: tc.set})
		d.enqueue(chunkMsg(t, 0))
		<-entered
		for i := range 100 {
			d.enqueue(chunkMsg(t, i+1))
			d.enqueue(tableMsg(t, i))
		}
		d.mu.Lock()
		bytes, chunks, others := d.chunkBytes, d.chunks, len(d.q)-d.chunks
		d.mu.Unlock()
		if wantChunks := min(tc.want/one, 100); bytes > tc.want || chunks != wantChunks || others != 100 {
			t.Errorf("MaxQueuedBytes %d: %d chunks (%d bytes) and %d others queued; want %d chunks within %d bytes and all 100 tables",
				tc.set, chunks, bytes, others, wantChunks, tc.want)
		}
		close(block)
		d.close()
	}
}

// TestDispatcherChunkOverBound: a chunk larger than MaxQueuedBytes is
// queued when no other chunk is (any chunk size gets through, one at a
// time), and dropped behind one.
func TestDispatcherChunkOverBound(t *testing.T) {
	block := make(chan struct{})
	entered := make(chan struct{}, 1)
	d := newDispatcher(context.Background(), func(_ context.Context, m Message) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-block
	}, SubscribeOptions{Family: FamilyChunk, MaxQueuedBytes: 100})
	defer d.close()
	d.enqueue(chunkMsg(t, 0))
	<-entered
	d.enqueue(chunkMsg(t, 1)) // 1 KiB, over 100 bytes: queued, the queue is empty
	d.enqueue(chunkMsg(t, 2)) // dropped
	d.mu.Lock()
	chunks, dropped := d.chunks, d.dropped
	d.mu.Unlock()
	close(block)
	if chunks != 1 || dropped != 1 {
		t.Errorf("%d chunks queued, %d dropped; want 1 and 1", chunks, dropped)
	}
}
