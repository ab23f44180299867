package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// With coded repair an image has two tables. A device of delivery
// protocol 1 (no protocol in its requests) is sent the plain table, one
// of protocol 2 the coded table; the manifest the server signs commits
// both digests. In one repair batch, the protocol-2 device's losses are
// repaired with parity and the protocol-1 device's with chunks (by
// unicast: only it asked for them).
func TestTablesByProtocol(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) {
		c.RepairWindow, c.WaveHold, c.ChunkSize, c.CodedRepair = 20*time.Millisecond, -1, 1024, true
		c.CodedBlock, c.CodedParity = 16, 4
	})
	_, table := uploadTable(t, e, p, 64*1024)
	if !table.Coded() {
		t.Fatal("the uploaded table is not coded")
	}
	digest := hex.EncodeToString(table.Image)
	oldDev, newDev := devName(0), devName(1)
	enrol(t, e, p, table, oldDev, newDev)
	cb, _ := schemas.Encode(table)
	pb, _ := schemas.Encode(plainTable(table))
	cs, ps := sha256.Sum256(cb), sha256.Sum256(pb)
	img, err := p.Image(context.Background(), digest)
	if err != nil {
		t.Fatal(err)
	}
	mp, mc, err := p.manifestTables(context.Background(), img)
	if err != nil || !bytes.Equal(mp, ps[:]) || !bytes.Equal(mc, cs[:]) {
		t.Fatalf("manifest tables %x %x (%v), want plain %x and coded %x", mp, mc, err, ps[:4], cs[:4])
	}

	ctx := context.Background()
	got := map[string]chan []byte{}
	conn := e.hub.Conn()
	t.Cleanup(func() { conn.Close(ctx) })
	for _, id := range []string{oldDev, newDev} {
		ch := make(chan []byte, 256)
		got[id] = ch
		rt, _ := e.cfg.Topics.ChunkReply(id)
		if _, err := conn.Subscribe(ctx, rt, func(_ context.Context, m broker.Message) { ch <- bytes.Clone(m.Payload) },
			broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
			t.Fatal(err)
		}
	}
	parity := make(chan struct{}, 256)
	bt, _ := e.cfg.Topics.Chunks(digest)
	if _, err := conn.Subscribe(ctx, bt, func(_ context.Context, m broker.Message) {
		if schemas.IsParityChunk(m.Payload) {
			parity <- struct{}{}
		}
	}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
		t.Fatal(err)
	}
	ask := func(id string, proto uint8, wantTable bool, want []uint32) {
		t.Helper()
		rt, _ := e.cfg.Topics.ChunkReply(id)
		r := schemas.ChunkRequest{V: schemas.Version, Image: table.Image, ChunkSize: 1024, ReplyTo: rt.NATS, Requester: id, WantTable: wantTable, Protocol: proto}
		if len(want) > 0 {
			bm := schemas.NewBitmap(64)
			for _, i := range want {
				bm.Set(i)
			}
			r.Bitmap = bm
		}
		b, err := schemas.Encode(&r)
		if err != nil {
			t.Fatal(err)
		}
		qt, _ := e.cfg.Topics.ChunkRequestsFrom(id)
		if err := conn.Publish(ctx, qt, b, broker.PublishOptions{Family: broker.FamilyChunkRequest}); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(id string) []byte {
		t.Helper()
		select {
		case b := <-got[id]:
			return b
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: nothing received", id)
			return nil
		}
	}
	ask(oldDev, 0, true, nil)
	if b := recv(oldDev); sha256.Sum256(b) != ps {
		t.Errorf("protocol 1 device: sent a table of digest %x, want the plain table's", sha256.Sum256(b))
	}
	ask(newDev, schemas.ProtocolCoded, true, nil)
	if b := recv(newDev); sha256.Sum256(b) != cs {
		t.Errorf("protocol 2 device: sent a table of digest %x, want the coded table's", sha256.Sum256(b))
	}

	// One batch: both lack chunks 5 and 20.
	ask(oldDev, 0, false, []uint32{5, 20})
	ask(newDev, schemas.ProtocolCoded, false, []uint32{5, 20})
	for i := range 2 {
		var c schemas.Chunk
		b := recv(oldDev)
		if !schemas.IsChunk(b) || schemas.Decode(b, &c) != nil || (c.Index != 5 && c.Index != 20) {
			t.Fatalf("protocol 1 device: message %d of the repair is not chunk 5 or 20", i)
		}
	}
	select {
	case <-parity:
	case <-time.After(10 * time.Second):
		t.Fatal("no parity for the protocol 2 device")
	}
	waitFor(t, 10*time.Second, func() string { return "repair sent" }, e.hub.Idle)
	if n := len(got[newDev]); n != 0 {
		t.Errorf("protocol 2 device: %d messages by unicast; want its repair by parity only", n)
	}
}
