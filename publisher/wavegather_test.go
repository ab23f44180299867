package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// askTable sends d's chunk table request (no chunks).
func (d *downloader) askTable(t testing.TB) {
	t.Helper()
	rt, _ := d.topics.ChunkReply(d.id)
	b, err := schemas.Encode(&schemas.ChunkRequest{V: schemas.Version, Image: d.table.Image, ChunkSize: d.table.ChunkSize, ReplyTo: rt.NATS, Requester: d.id, WantTable: true})
	if err != nil {
		t.Fatal(err)
	}
	qt, _ := d.topics.ChunkRequestsFrom(d.id)
	d.tr.Publish(context.Background(), qt, b, broker.PublishOptions{Family: broker.FamilyChunkRequest})
}

// tableSent reports whether p sent the table of digest to device.
func tableSent(p *Publisher, digest, device string) bool {
	p.dl.waveMu.Lock()
	defer p.dl.waveMu.Unlock()
	w := p.dl.waves[digest]
	if w == nil {
		return false
	}
	_, ok := w.tables[device]
	return ok
}

// A due wave is held until every downloading device has been sent the
// chunk table and WaveSettle passed (or, at the latest, WaveHold);
// requests that arrive while it is held are left to it; each device then
// gets the image from one wave.
func TestWaveHeldUntilDevicesListen(t *testing.T) {
	for _, tc := range []struct {
		name  string
		asked int           // devices that ask for the table
		wait  time.Duration // clock advance that releases the wave
	}{
		{"all-asked", 3, 250 * time.Millisecond},
		{"hold-cap", 1, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			p, _ := e.start(func(c *Config) { c.BroadcastMin, c.RepairWindow, c.WaveHold = 2, 20*time.Millisecond, 3*time.Second })
			ctx := context.Background()
			who := e.who(p)
			data, table := uploadTable(t, e, p, 20*1024)
			digest := hex.EncodeToString(table.Image)
			f := newFleet(e)
			var devs []*downloader
			for i := range 3 {
				if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: devName(i), Class: "sensor"}); err != nil {
					t.Fatal(err)
				}
				devs = append(devs, newDownloader(t, e.hub, e.cfg.Topics, devName(i), table, nil))
				if i > 0 {
					f.add(devName(i), false, true)
				}
			}
			c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: table.Image, Envelope: testEnvelope(t, table.Image), Class: "sensor", Start: true})
			if err != nil {
				t.Fatal(err)
			}
			// The first device has its table before it reports downloading
			// (tables go only to devices notified in the campaign).
			waitFor(t, 10*time.Second, func() string { return "notified" }, func() bool {
				st, _, ok := p.idx.dev(c.ID, devName(0))
				return ok && st.State != StateQueued
			})
			devs[0].askTable(t)
			waitFor(t, 5*time.Second, func() string { return "table" }, func() bool { return tableSent(p, digest, devName(0)) })
			f.add(devName(0), false, true)
			waitFor(t, 10*time.Second, func() string { return "downloading" }, func() bool {
				n, _ := p.idx.counts(c.ID)
				return n["downloading"] == 3
			})
			for _, d := range devs[1:tc.asked] {
				d.askTable(t)
				waitFor(t, 5*time.Second, func() string { return "table" }, func() bool { return tableSent(p, digest, d.id) })
			}
			// Held: a request now gets nothing by unicast or repair.
			devs[0].request(t)
			awaitTicks(t, p, 5)
			waitFor(t, 5*time.Second, func() string { return "idle" }, e.hub.Idle)
			if w, r, got := p.dl.egress.Wave.Load(), p.dl.egress.Repair.Load(), devs[0].got; w+r != 0 || got != 0 {
				t.Fatalf("held wave: wave %d, repair %d bytes sent, device 0 holds %d chunks", w, r, got)
			}
			e.clock.Advance(tc.wait)
			waitFor(t, 10*time.Second, func() string { return fmt.Sprintf("wave bytes %d", p.dl.egress.Wave.Load()) }, allComplete(devs))
			for _, d := range devs {
				if !bytes.Equal(d.data, data) {
					t.Fatalf("%s: wrong image", d.id)
				}
			}
			waitFor(t, 5*time.Second, func() string { return "idle" }, e.hub.Idle)
			chunks := p.dl.egress.Wave.Load() + p.dl.egress.Repair.Load()
			if p.dl.egress.Wave.Load() < int64(len(data)) || chunks > int64(len(data))*11/10 {
				t.Errorf("wave %d, repair %d bytes for a %d-byte image, want one wave", p.dl.egress.Wave.Load(), p.dl.egress.Repair.Load(), len(data))
			}
		})
	}
}

// A repair batch leaves out the chunks broadcast within InTransit before
// its first request: they are still on their way through the broker.
func TestRepairLeavesOutChunksInTransit(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.RepairWindow, c.InTransit, c.WaveHold = 20*time.Millisecond, time.Hour, -1 })
	_, table := uploadTable(t, e, p, 10*1024)
	enrol(t, e, p, table, devName(1), devName(2))
	d := newDownloader(t, e.hub, e.cfg.Topics, devName(1), table, nil)
	late := newDownloader(t, e.hub, e.cfg.Topics, devName(2), table, nil)
	late.tr.SetDrop(func(string, []byte) bool { return true }) // misses the wave
	if err := p.Wave(context.Background(), hex.EncodeToString(table.Image)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string { return "wave" }, func() bool { return d.complete() && e.hub.Idle() })
	late.tr.SetDrop(nil)
	served := p.met.chunkRequests.WithLabelValues("served")
	before := counterValue(served)
	late.request(t)
	waitFor(t, 5*time.Second, func() string { return "repair flush" }, func() bool { return counterValue(served) > before })
	waitFor(t, 5*time.Second, func() string { return "idle" }, e.hub.Idle)
	if r, u := p.dl.egress.Repair.Load(), p.dl.egress.Unicast.Load(); r != 0 || u != 0 {
		t.Errorf("chunks in transit sent again: repair %d, unicast %d bytes", r, u)
	}
}

// A wave paced by its echo (WaveEcho) delivers the image once to every
// listener.
func TestWavePacedByEcho(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.WaveEcho = 4 })
	data, table := uploadTable(t, e, p, 40*1024)
	var devs []*downloader
	for i := range 5 {
		devs = append(devs, newDownloader(t, e.hub, e.cfg.Topics, devName(i), table, nil))
	}
	start := time.Now()
	if err := p.Wave(context.Background(), hex.EncodeToString(table.Image)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= echoStall {
		t.Errorf("wave took %v: its echo did not pace it", d)
	}
	waitFor(t, 5*time.Second, func() string { return "wave" }, allComplete(devs))
	for _, d := range devs {
		if !bytes.Equal(d.data, data) {
			t.Fatalf("%s: wrong image", d.id)
		}
	}
	if w := p.dl.egress.Wave.Load(); w < int64(len(data)) || w > int64(len(data))*11/10 {
		t.Errorf("wave egress %d for a %d-byte image", w, len(data))
	}
}
