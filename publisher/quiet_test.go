package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
)

// quietConn is a device's connection in TestQuietDevices: it counts the
// chunk requests the device sends and tells when its subscription to the
// broadcast topic is up.
type quietConn struct {
	broker.Transport
	bcast    schemas.Topic
	requests *atomic.Int64
	up       *sync.WaitGroup
	once     sync.Once
}

func (c *quietConn) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	if o.Family == broker.FamilyChunkRequest {
		c.requests.Add(1)
	}
	return c.Transport.Publish(ctx, t, b, o)
}

func (c *quietConn) Subscribe(ctx context.Context, t schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	sub, err := c.Transport.Subscribe(ctx, t, h, o)
	if err == nil && t == c.bcast {
		c.once.Do(c.up.Done)
	}
	return sub, err
}

// memSlot is a device's slot in TestQuietDevices (the image being
// written; the decode reads held chunks back from it).
type memSlot struct {
	mu  sync.Mutex
	buf []byte
}

func (s *memSlot) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return copy(p, s.buf[off:]), nil
}

// Quiet devices (issue 14 item 3): under independent 5% loss, after a
// wave about 97% of N devices lack something and would each send a loss
// summary. The summary back-off is spread exponentially and biased to the
// neediest (fetcher's summaryDelay): the first few summaries size the
// publisher's first repair round, whose announcement reaches the others
// before their back-off ends: it covers most (they stay quiet, counted
// in Suppressed), and its parity completes them. The devices are
// fetcher.BrokerSources over the in-memory hub; every chunk request any
// of them sends is counted, and every device completes. Blocks of 64
// chunks with 5% loss leave every device lacking 4 or more symbols in
// some block, which the back-off of 5 slots by need sent in its first
// slot: 169 requests from 500 devices (257 under -race), against 13 to
// 22 (40 to 79) with the spread back-off. The back-off is 10s for -race
// in CI, where every package's tests share the machine and a device's
// loop takes seconds to hear the announcement (at 6s one CI run counted
// 159). One CI run at 10s counted 276: the 500 devices that rebuilt
// their first block together each built the Reed-Solomon code (the
// cache filled only after the first build), and with the cores busy a
// parity chunk took 2.5 s to reach them all; built once per process
// (blockcode.parityRows), the test counts 16 to 27 with three busy loops
// beside it on the two cores (it counted 184 to 473 before).
func TestQuietDevices(t *testing.T) {
	n := 500
	if testing.Short() {
		n = 100
	}
	e := newEnv(t)
	p, _ := e.start(func(c *Config) {
		c.RepairWindow, c.WaveHold, c.ChunkSize, c.CodedRepair = 100*time.Millisecond, -1, 1024, true
		c.CodedBlock, c.CodedParity = 64, 16 // a decode under -race costs K^3
	})
	data, table := uploadTable(t, e, p, 256*1024) // 256 chunks: 4 blocks of 64
	digest := hex.EncodeToString(table.Image)
	enrol(t, e, p, table, devNames(n)...)
	pb, err := schemas.Encode(plainTable(table))
	if err != nil {
		t.Fatal(err)
	}
	cb, err := schemas.Encode(table)
	if err != nil {
		t.Fatal(err)
	}
	ps, cs := sha256.Sum256(pb), sha256.Sum256(cb)
	im := fetcher.Image{Digest: table.Image, Size: table.ImageSize, ChunkSize: table.ChunkSize, TableDigest: ps[:], CodedTableDigest: cs[:]}
	bt, _ := e.cfg.Topics.Chunks(digest)

	var lossy atomic.Bool
	var requests atomic.Int64
	var up sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type dev struct {
		src  *fetcher.BrokerSource
		slot *memSlot
		err  error
	}
	devs := make([]*dev, n)
	var done sync.WaitGroup
	for i := range n {
		id := devName(i)
		conn := e.hub.Conn()
		t.Cleanup(func() { conn.Close(context.Background()) })
		h := fnv.New64a()
		h.Write([]byte(id))
		rng := rand.New(rand.NewPCG(h.Sum64(), 5))
		var mu sync.Mutex
		conn.SetDrop(func(_ string, b []byte) bool { // chunks and parity only, independently per device
			if !lossy.Load() || !(schemas.IsChunk(b) || schemas.IsParityChunk(b)) {
				return false
			}
			mu.Lock()
			defer mu.Unlock()
			return rng.Float64() < 0.05
		})
		up.Add(1)
		src, err := fetcher.NewBrokerSource(fetcher.BrokerConfig{
			Transport: &quietConn{Transport: conn, bcast: bt, requests: &requests, up: &up}, Topics: e.cfg.Topics, Device: id,
			Idle: 10 * time.Second, MaxIdle: 5, ListenFirst: 30 * time.Second, Quiet: 2 * time.Second, SummaryBackoff: 10 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		d := &dev{src: src, slot: &memSlot{buf: make([]byte, len(data))}}
		devs[i] = d
		done.Add(1)
		go func() {
			defer done.Done()
			deliver := func(i int, b []byte) error {
				if err := table.VerifyChunk(uint32(i), b); err != nil {
					return err
				}
				d.slot.mu.Lock()
				copy(d.slot.buf[i*int(table.ChunkSize):], b)
				d.slot.mu.Unlock()
				return nil
			}
			d.err = src.FetchRepair(ctx, im, fetcher.AllChunks(int(table.NumChunks())), deliver, fetcher.Repair{Table: table, Slot: d.slot})
		}()
	}
	up.Wait()
	lossy.Store(true)
	if err := p.Wave(ctx, digest); err != nil {
		t.Fatal(err)
	}
	done.Wait()
	suppressed, rebuilt := 0, 0
	for i, d := range devs {
		if d.err != nil {
			t.Fatalf("%s: %v", devName(i), d.err)
		}
		if !bytes.Equal(d.slot.buf, data) {
			t.Fatalf("%s: wrong image", devName(i))
		}
		suppressed += d.src.Suppressed
		rebuilt += d.src.Rebuilt
	}
	sent := requests.Load()
	t.Logf("%d devices, 5%% loss: %d chunk requests (loss summaries and later asks), %d summaries suppressed by announcements, %d chunks rebuilt from parity; egress wave %d B, repair %d B, unicast %d B",
		n, sent, suppressed, rebuilt, p.dl.egress.Wave.Load(), p.dl.egress.Repair.Load(), p.dl.egress.Unicast.Load())
	if rebuilt == 0 {
		t.Fatal("nothing rebuilt from parity: did the devices lose anything?")
	}
	// Without suppression about 96% of the devices (those that lost a
	// chunk of the 64) would each send a summary.
	if sent > int64(n)/4 {
		t.Errorf("%d chunk requests from %d devices; want far fewer than one each", sent, n)
	}
}
