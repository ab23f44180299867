package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
)

// TestMidCarouselJoinerNoUnicast: a device (a real fetcher broker source
// of delivery protocol 2) that joins a coded image's carousel halfway
// through a wave takes the carousel where it is and completes from the
// rest of that wave, parity and the waves that follow, not from a
// unicast stream of its own: the chunks sent to it by unicast stay
// within a small straggler share of the image (the chunk table it asks
// for may come by unicast; it is counted apart).
func TestMidCarouselJoinerNoUnicast(t *testing.T) {
	const early, late = "dev-early", "dev-late"
	e := newEnv(t)
	// The first wave holds past its middle until the late device has
	// asked for the table: it joins while the wave flows. Not held, a
	// loaded machine sometimes let the 256 KiB wave end before the
	// device asked (it listens ListenFirst first); it then joined after
	// the carousel, not in it, and with no campaign to bring another
	// wave was answered by unicast.
	gate := &holdConn{hold: 256/2 + 8, release: make(chan struct{})}
	dial := e.dial
	e.dial = func(id string, backend bool) broker.Transport {
		gate.Transport = dial(id, backend)
		return gate
	}
	p, _ := e.start(func(c *Config) {
		c.RepairWindow, c.WaveHold, c.ChunkSize, c.CodedRepair = 20*time.Millisecond, -1, 1024, true
		c.CodedBlock, c.CodedParity = 32, 16 // small blocks: decodes are slow under -race
	})
	e.dial = dial
	data, table := uploadTable(t, e, p, 256*1024) // 256 chunks: 8 blocks of 32
	digest := hex.EncodeToString(table.Image)
	enrol(t, e, p, table, early, late)
	d := tableOf(t, p, digest)
	plain, err := p.dl.tableFor(d, schemas.ProtocolPlain)
	if err != nil {
		t.Fatal(err)
	}
	pd, cd := sha256.Sum256(plain), sha256.Sum256(d.tableBytes)
	im := fetcher.Image{Digest: table.Image, Size: table.ImageSize, ChunkSize: table.ChunkSize, TableDigest: pd[:], CodedTableDigest: cd[:]}
	n := int(table.NumChunks())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// What the late device is sent on its own reply topic.
	var uniChunks, uniTables, uniBytes atomic.Int64
	spy := e.hub.Conn()
	t.Cleanup(func() { spy.Close(context.Background()) })
	lateReply, _ := e.cfg.Topics.ChunkReply(late)
	if _, err := spy.Subscribe(ctx, lateReply, func(_ context.Context, m broker.Message) {
		uniBytes.Add(int64(len(m.Payload)))
		if schemas.IsChunk(m.Payload) {
			uniChunks.Add(1)
		} else {
			uniTables.Add(1)
		}
	}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
		t.Fatal(err)
	}
	// The early device's view of the broadcast: the late one starts once
	// half of the first wave went by.
	var seen atomic.Int64
	half := make(chan struct{})
	var once sync.Once
	bt, _ := e.cfg.Topics.Chunks(digest)
	if _, err := spy.Subscribe(ctx, bt, func(_ context.Context, m broker.Message) {
		if schemas.IsChunk(m.Payload) && seen.Add(1) >= int64(n/2) {
			once.Do(func() { close(half) })
		}
	}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
		t.Fatal(err)
	}
	// The carousel: waves until the late device is done, each starting
	// once the previous one and its repair went out.
	done := make(chan struct{})
	var waves atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			if err := p.Wave(ctx, digest); err != nil {
				return
			}
			waves.Add(1)
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	select {
	case <-half:
	case <-ctx.Done():
		t.Fatal("the first wave never got halfway")
	}
	lateReqs, _ := e.cfg.Topics.ChunkRequestsFrom(late)
	var asked sync.Once
	if _, err := spy.Subscribe(ctx, lateReqs, func(context.Context, broker.Message) {
		asked.Do(func() { close(gate.release) })
	}, broker.SubscribeOptions{Family: broker.FamilyChunkRequest}); err != nil {
		t.Fatal(err)
	}
	conn := e.hub.Conn()
	t.Cleanup(func() { conn.Close(context.Background()) })
	src, err := fetcher.NewBrokerSource(fetcher.BrokerConfig{Transport: conn, Topics: e.cfg.Topics, Device: late,
		Idle: 2 * time.Second, MaxIdle: 10, ListenFirst: 200 * time.Millisecond, Quiet: 100 * time.Millisecond, SummaryBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	joinedAt := seen.Load()
	tb, err := src.Table(ctx, im)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := fetcher.DecodeTable(im, tb)
	if err != nil {
		t.Fatal(err)
	}
	slot := &memSlot{buf: make([]byte, len(data))}
	err = src.FetchRepair(ctx, im, fetcher.AllChunks(n), func(i int, c []byte) error {
		if err := ct.VerifyChunk(uint32(i), c); err != nil {
			return fetcher.ErrBadChunk
		}
		slot.mu.Lock()
		copy(slot.buf[im.Offset(i):], c)
		slot.mu.Unlock()
		return nil
	}, fetcher.Repair{Table: ct, Slot: slot})
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(slot.buf, data) {
		t.Fatal("the late device's slot does not hold the image")
	}
	// A straggler's share: what a device that heard the carousel may
	// still lack, 1/16 of the image here.
	cap := int64(n / 16)
	t.Logf("joined after %d of %d chunks of wave 1; %d waves; %d chunks rebuilt from parity; %d requests (%d summaries suppressed); unicast to it: %d chunks, %d tables, %d bytes",
		joinedAt, n, waves.Load(), src.Rebuilt, src.Requests, src.Suppressed, uniChunks.Load(), uniTables.Load(), uniBytes.Load())
	if got := uniChunks.Load(); got > cap {
		t.Errorf("the late joiner was sent %d chunks by unicast (a stream of its own); want at most %d", got, cap)
	}
	if uniTables.Load() > 1 {
		t.Errorf("%d tables by unicast, want at most 1", uniTables.Load())
	}
}

// holdConn holds the chunk publishes of its transport past the hold-th
// until release is closed.
type holdConn struct {
	broker.Transport
	hold    int64
	n       atomic.Int64
	release chan struct{}
}

func (c *holdConn) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	if schemas.IsChunk(b) && c.n.Add(1) > c.hold {
		select {
		case <-c.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return c.Transport.Publish(ctx, t, b, o)
}
