package fleet

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestLossAtReceivePath: a device with Loss drops about that fraction of
// the chunks it receives, independently of another device, and never a
// chunk table; with no loss it drops nothing.
func TestLossAtReceivePath(t *testing.T) {
	hub := testutil.NewMemHub()
	topics := schemas.MustTopics("losstest")
	ct, _ := topics.Chunks("ab")
	const chunks, loss = 4000, 0.05
	type dev struct {
		c             *counting
		chunks, table atomic.Int64
		seen          []bool
	}
	var devs []*dev
	for i, l := range []float64{loss, loss, 0} {
		d := &dev{seen: make([]bool, chunks)}
		d.c = newCounting(hub.Conn(), &Device{ID: string(rune('a' + i))}, l, 1)
		if _, err := d.c.Subscribe(context.Background(), ct, func(_ context.Context, m broker.Message) {
			var c schemas.Chunk
			if schemas.Decode(m.Payload, &c) == nil {
				d.seen[c.Index] = true
				d.chunks.Add(1)
				return
			}
			d.table.Add(1)
		}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}
	pub := hub.Conn()
	img := make([]byte, 32)
	for i := range chunks {
		b, _ := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: img, Index: uint32(i), Data: []byte{1}})
		pub.Publish(context.Background(), ct, b, broker.PublishOptions{Family: broker.FamilyChunk})
		if i%1000 == 0 {
			tb, _ := schemas.Encode(&schemas.ChunkTable{V: schemas.Version, Image: img, ImageSize: 1, ChunkSize: 1, Hashes: make([]schemas.Digest, 1)})
			pub.Publish(context.Background(), ct, tb, broker.PublishOptions{Family: broker.FamilyChunk})
		}
	}
	waitUntil(t, func() bool {
		for _, d := range devs {
			if d.chunks.Load()+d.c.lost.Load() != chunks || d.table.Load() != 4 {
				return false
			}
		}
		return true
	})
	for i, d := range devs[:2] {
		// 5% of 4000 = 200, sd ~14: far outside 120..280 is a bug.
		if n := d.c.lost.Load(); n < 120 || n > 280 {
			t.Errorf("device %d lost %d of %d chunks, want about %d", i, n, chunks, int(chunks*loss))
		}
	}
	same := 0
	for i := range chunks {
		if !devs[0].seen[i] && !devs[1].seen[i] {
			same++
		}
	}
	if same > 40 { // independent: about 0.05^2 * 4000 = 10
		t.Errorf("%d chunks lost by both devices: losses not independent", same)
	}
	if n := devs[2].c.lost.Load(); n != 0 {
		t.Errorf("device without loss dropped %d chunks", n)
	}
}

// waitUntil polls cond until it holds, failing after 10s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling the condition
	}
}
