package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

func uploadTable(t testing.TB, e *testEnv, p *Publisher, n int) ([]byte, *schemas.ChunkTable) {
	t.Helper()
	data := randomImage(t, n)
	img, _, err := p.UploadImage(context.Background(), e.who(p), "x", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.loadImage(context.Background(), img.Digest)
	if err != nil {
		t.Fatal(err)
	}
	return data, d.table
}

// enrol registers the devices ids and notifies them in a running campaign
// of table's image (the publisher serves chunk requests only to such
// devices), and waits until every one is notified. Nothing answers the
// notices: the devices stay pending.
func enrol(t testing.TB, e *testEnv, p *Publisher, table *schemas.ChunkTable, ids ...string) Campaign {
	t.Helper()
	ctx := context.Background()
	who := e.who(p)
	for _, id := range ids {
		if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: id, Class: "sensor"}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: table.Image, Envelope: testEnvelope(t, table.Image), Devices: ids, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() string { return "devices notified" }, func() bool {
		n, _ := p.idx.counts(c.ID)
		return n["pending"] == uint64(len(ids))
	})
	return c
}

func devNames(n int) []string {
	var out []string
	for i := range n {
		out = append(out, devName(i))
	}
	return out
}

func TestBroadcastWaveWithRepair(t *testing.T) {
	e := newEnv(t)
	// No wave hold: the test sends its wave by hand, and the fake clock
	// never ends a hold.
	p, _ := e.start(func(c *Config) { c.RepairWindow, c.WaveHold = 20*time.Millisecond, -1 })
	data, table := uploadTable(t, e, p, 40*1024+100)
	enrol(t, e, p, table, devNames(20)...)
	loss := &lossModel{rate: 0.1}
	var devs []*downloader
	for i := range 20 {
		devs = append(devs, newDownloader(t, e.hub, e.cfg.Topics, devName(i), table, loss))
	}
	loss.active.Store(true)
	if err := p.Wave(context.Background(), hex.EncodeToString(table.Image)); err != nil {
		t.Fatal(err)
	}
	// Wait until the wave is delivered: every device has what survived.
	waitFor(t, 10*time.Second, func() string { return "wave delivery" }, func() bool {
		n := 0
		for _, d := range devs {
			d.mu.Lock()
			n += d.got
			d.mu.Unlock()
		}
		return n > 0 && e.hub.Idle()
	})
	loss.active.Store(false)
	incomplete := 0
	for _, d := range devs {
		if !d.complete() {
			incomplete++
			d.request(t)
		}
	}
	if incomplete == 0 {
		t.Fatal("10% loss lost nothing: the loss model does not work")
	}
	waitFor(t, 10*time.Second, func() string { return "repair" }, allComplete(devs))
	for _, d := range devs {
		if !bytes.Equal(d.data, data) || d.bad != 0 {
			t.Fatalf("%s assembled a wrong image (%d bad chunks)", d.id, d.bad)
		}
	}
	wave, repair := p.dl.egress.Wave.Load(), p.dl.egress.Repair.Load()
	if wave < int64(len(data)) || wave > int64(len(data))*11/10 {
		t.Errorf("wave egress %d for a %d-byte image", wave, len(data))
	}
	if repair == 0 {
		t.Errorf("chunks missed by several devices were not broadcast again (repair %d, unicast %d)", repair, p.dl.egress.Unicast.Load())
	}
}

func TestRequestMode(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.WaveHold = -1 }) // RepairWindow 0: each request answered at once
	data, table := uploadTable(t, e, p, 10*1024)
	enrol(t, e, p, table, devName(1), devName(2))
	d := newDownloader(t, e.hub, e.cfg.Topics, devName(1), table, nil)
	// A request whose reply address is another device's is refused.
	evil := newDownloader(t, e.hub, e.cfg.Topics, devName(2), table, nil)
	rt, _ := e.cfg.Topics.ChunkReply(devName(1))
	b, _ := schemas.Encode(&schemas.ChunkRequest{V: schemas.Version, Image: table.Image, ChunkSize: table.ChunkSize, Ranges: []schemas.Range{{First: 0, Count: 10}}, ReplyTo: rt.NATS, Requester: devName(2)})
	qt, _ := e.cfg.Topics.ChunkRequestsFrom(devName(2))
	evil.tr.Publish(context.Background(), qt, b, brokerChunkReq)
	d.request(t)
	waitFor(t, 10*time.Second, func() string { return fmt.Sprintf("got %d", d.got) }, d.complete)
	if !bytes.Equal(d.data, data) {
		t.Fatal("wrong image")
	}
	waitFor(t, 5*time.Second, func() string { return "idle" }, e.hub.Idle)
	if got := p.met.chunkRequests.WithLabelValues("bad-reply-to"); got == nil {
		t.Fatal("no metric")
	}
	if n := p.dl.egress.Unicast.Load(); n > int64(len(data))*11/10 {
		t.Errorf("unicast egress %d for one device and a %d-byte image: the spoofed request was served", n, len(data))
	}
}

// startWaveCampaign adds three sensors, uploads a 20 KiB image, starts a
// downloader and a campaign responder (downloading) for each and starts a
// campaign of the image for the class: enough devices for a wave with
// BroadcastMin 3. It returns the image and the downloaders.
func startWaveCampaign(t *testing.T, e *testEnv, p *Publisher) ([]byte, []*downloader) {
	t.Helper()
	ctx := context.Background()
	who := e.who(p)
	for i := range 3 {
		if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: devName(i), Class: "sensor"}); err != nil {
			t.Fatal(err)
		}
	}
	data, table := uploadTable(t, e, p, 20*1024)
	var devs []*downloader
	f := newFleet(e)
	for i := range 3 {
		devs = append(devs, newDownloader(t, e.hub, e.cfg.Topics, devName(i), table, nil))
		f.add(devName(i), false, true)
	}
	if _, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: table.Image, Envelope: testEnvelope(t, table.Image), Class: "sensor", Start: true}); err != nil {
		t.Fatal(err)
	}
	return data, devs
}

// checkImages fails the test unless every downloader holds data.
func checkImages(t *testing.T, devs []*downloader, data []byte) {
	t.Helper()
	for _, d := range devs {
		if !bytes.Equal(d.data, data) {
			t.Fatalf("%s: wrong image", d.id)
		}
	}
}

// The leader starts a broadcast wave by itself once BroadcastMin devices
// report downloading, and not again within WaveInterval.
func TestLeaderStartsWave(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.BroadcastMin = 3 })
	data, devs := startWaveCampaign(t, e, p)
	waitFor(t, 10*time.Second, func() string { return fmt.Sprintf("wave bytes %d", p.dl.egress.Wave.Load()) }, allComplete(devs))
	checkImages(t, devs, data)
	waitFor(t, 5*time.Second, func() string { return "wave counted" }, func() bool { return counterValue(p.met.waves) >= 1 })
	awaitTicks(t, p, 3)
	if w := counterValue(p.met.waves); w != 1 {
		t.Errorf("%v waves within the wave interval, want 1", w)
	}
}

// failFirstChunk is the publisher's transport with its first chunk-family
// publish failing (a broker that timed out under load).
type failFirstChunk struct {
	broker.Transport
	failed atomic.Bool
}

func (f *failFirstChunk) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	if o.Family == broker.FamilyChunk && f.failed.CompareAndSwap(false, true) {
		return fmt.Errorf("publish %s: %w", t.NATS, context.DeadlineExceeded)
	}
	return f.Transport.Publish(ctx, t, b, o)
}

// A wave that fails (here its first publish) is sent again once the wave
// interval passed: under load one failed publish or store read used to
// end the only wave of a campaign, and every device then took the whole
// image by repair and unicast.
func TestWaveAgainAfterFailedWave(t *testing.T) {
	e := newEnv(t)
	dial := e.dial
	e.dial = func(id string, shared bool) broker.Transport {
		return &failFirstChunk{Transport: dial(id, shared)}
	}
	p, _ := e.start(func(c *Config) { c.BroadcastMin = 3; c.WaveInterval = 100 * time.Millisecond })
	data, devs := startWaveCampaign(t, e, p)
	waitFor(t, 10*time.Second, func() string {
		return fmt.Sprintf("waves %v, failed %v", counterValue(p.met.waves), counterValue(p.met.wavesFailed))
	}, func() bool {
		e.clock.Advance(50 * time.Millisecond) // the publisher's clock: the wave interval passes
		return counterValue(p.met.waves) >= 1
	})
	if n := counterValue(p.met.wavesFailed); n != 1 {
		t.Errorf("%v failed waves, want 1", n)
	}
	waitFor(t, 10*time.Second, func() string { return "devices complete" }, allComplete(devs))
	checkImages(t, devs, data)
}
