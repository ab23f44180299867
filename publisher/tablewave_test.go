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
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// askTableListening sends d's chunk table request as a device listening
// on the broadcast topic does (fetcher.BrokerSource.Table).
func (d *downloader) askTableListening(t testing.TB) {
	t.Helper()
	rt, _ := d.topics.ChunkReply(d.id)
	b, err := schemas.Encode(&schemas.ChunkRequest{V: schemas.Version, Image: d.table.Image, ChunkSize: d.table.ChunkSize, ReplyTo: rt.NATS, Requester: d.id, WantTable: true, Listening: true})
	if err != nil {
		t.Fatal(err)
	}
	qt, _ := d.topics.ChunkRequestsFrom(d.id)
	d.tr.Publish(context.Background(), qt, b, broker.PublishOptions{Family: broker.FamilyChunkRequest})
}

// countTables counts the chunk tables of d's image d receives, broadcast
// and by unicast.
func countTables(t testing.TB, d *downloader) (bcast, unicast *atomic.Int64) {
	t.Helper()
	bcast, unicast = new(atomic.Int64), new(atomic.Int64)
	ct, _ := d.topics.Chunks(hex.EncodeToString(d.table.Image))
	rt, _ := d.topics.ChunkReply(d.id)
	for _, tc := range []struct {
		tp schemas.Topic
		n  *atomic.Int64
	}{{ct, bcast}, {rt, unicast}} {
		if _, err := d.tr.Subscribe(context.Background(), tc.tp, func(_ context.Context, m broker.Message) {
			var tb schemas.ChunkTable
			if schemas.Decode(m.Payload, &tb) == nil && bytes.Equal(tb.Image, d.table.Image) {
				tc.n.Add(1)
			}
		}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
			t.Fatal(err)
		}
	}
	return bcast, unicast
}

// The chunk table goes by broadcast in the wave to devices that listen:
// at N devices no table is sent by unicast when nobody loses the table's
// copies; a device that missed every copy asks again after the wave and
// gets it by unicast, alone.
func TestTableGoesByWave(t *testing.T) {
	const n = 20
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.BroadcastMin, c.RepairWindow, c.WaveHold = 2, 20*time.Millisecond, 3*time.Second })
	ctx := context.Background()
	who := e.who(p)
	data, table := uploadTable(t, e, p, 300*1024) // 300 chunks: copies at 0, 128, 256
	digest := hex.EncodeToString(table.Image)
	f := newFleet(e)
	var devs []*downloader
	var bcast, uni []*atomic.Int64
	for i := range n {
		if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: devName(i), Class: "sensor"}); err != nil {
			t.Fatal(err)
		}
		d := newDownloader(t, e.hub, e.cfg.Topics, devName(i), table, nil)
		b, u := countTables(t, d)
		devs, bcast, uni = append(devs, d), append(bcast, b), append(uni, u)
	}
	// The last device loses every broadcast copy of the table.
	deaf := devs[n-1]
	ct, _ := e.cfg.Topics.Chunks(digest)
	deaf.tr.SetDrop(func(tp string, b []byte) bool {
		return (tp == ct.NATS || tp == ct.MQTT) && !schemas.IsChunk(b) && isTable(b)
	})
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: table.Image, Envelope: testEnvelope(t, table.Image), Class: "sensor", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() string { return "notified" }, func() bool {
		nn, _ := p.idx.counts(c.ID)
		return nn["pending"] == n
	})
	for _, d := range devs {
		d.askTableListening(t)
		f.add(d.id, false, true)
	}
	waitFor(t, 10*time.Second, func() string { return "downloading" }, func() bool {
		nn, _ := p.idx.counts(c.ID)
		return nn["downloading"] == n
	})
	for _, d := range devs {
		waitFor(t, 5*time.Second, func() string { return "join" }, func() bool { return tableSent(p, digest, d.id) })
	}
	e.clock.Advance(250 * time.Millisecond)
	waitFor(t, 20*time.Second, func() string { return fmt.Sprintf("wave bytes %d", p.dl.egress.Wave.Load()) }, allComplete(devs))
	waitFor(t, 5*time.Second, func() string { return "idle" }, e.hub.Idle)
	if u := p.dl.egress.Table.Load(); u != 0 {
		t.Errorf("%d table bytes sent by unicast to devices listening to the wave", u)
	}
	for i, d := range devs[:n-1] {
		if !bytes.Equal(d.data, data) {
			t.Fatalf("%s: wrong image", d.id)
		}
		if b, u := bcast[i].Load(), uni[i].Load(); b < 1 || u != 0 {
			t.Errorf("%s: %d tables broadcast, %d by unicast; want the wave's copies only", d.id, b, u)
		}
	}
	// The deaf device asks again after the wave: answered by unicast.
	waitFor(t, 10*time.Second, func() string { return "wave over" }, func() bool { return p.dl.waveAhead(digest).none() })
	deaf.askTableListening(t)
	waitFor(t, 10*time.Second, func() string { return "unicast table" }, func() bool { return uni[n-1].Load() == 1 })
	if got, want := p.dl.egress.Table.Load(), int64(len(mustEncode(t, table))); got != want {
		t.Errorf("unicast table bytes %d, want one table (%d)", got, want)
	}
	checkEgressMetrics(t, p, "wave", "wave_table", "wave_end", "table")
}

// checkEgressMetrics checks that p's chunk egress metric, summed over its
// kinds, equals its Egress counters (every chunk-family message counted
// in both), and that each of kinds was counted.
func checkEgressMetrics(t testing.TB, p *Publisher, kinds ...string) {
	t.Helper()
	ch := make(chan prometheus.Metric, 16)
	go func() { p.met.chunkBytes.Collect(ch); close(ch) }()
	got := map[string]float64{}
	var sum float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		for _, l := range d.GetLabel() {
			if l.GetName() == "kind" {
				got[l.GetValue()] += d.GetCounter().GetValue()
			}
		}
		sum += d.GetCounter().GetValue()
	}
	if want := p.dl.egress.Wave.Load() + p.dl.egress.Repair.Load() + p.dl.egress.Unicast.Load(); sum != float64(want) {
		t.Errorf("chunk egress metrics %v add up to %.0f B; Egress counted %d B", got, sum, want)
	}
	for _, k := range kinds {
		if got[k] == 0 {
			t.Errorf("chunk egress metric kind %q: nothing counted (%v)", k, got)
		}
	}
}

func isTable(b []byte) bool {
	var tb schemas.ChunkTable
	return schemas.Decode(b, &tb) == nil
}

func mustEncode(t testing.TB, m schemas.Message) []byte {
	t.Helper()
	b, err := schemas.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A wave ends with a WaveEnd marker on the broadcast topic, after its
// last chunk, naming the chunks it carried and numbering the waves.
func TestWaveEndsWithMarker(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	_, table := uploadTable(t, e, p, 40*1024)
	digest := hex.EncodeToString(table.Image)
	ct, _ := e.cfg.Topics.Chunks(digest)
	type seen struct {
		marker *schemas.WaveEnd
		after  int // chunks before it
	}
	got := make(chan seen, 4)
	chunks := 0
	conn := e.hub.Conn()
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Subscribe(context.Background(), ct, func(_ context.Context, m broker.Message) {
		if schemas.IsChunk(m.Payload) {
			chunks++
			return
		}
		var we schemas.WaveEnd
		if schemas.Decode(m.Payload, &we) == nil {
			got <- seen{&we, chunks}
		}
	}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
		t.Fatal(err)
	}
	for wave := uint32(1); wave <= 2; wave++ {
		if err := p.Wave(context.Background(), digest); err != nil {
			t.Fatal(err)
		}
		var s seen
		select {
		case s = <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("wave %d: no end marker", wave)
		}
		n := int(table.NumChunks())
		if s.after != int(wave)*n || s.marker.Wave != wave || !bytes.Equal(s.marker.Image, table.Image) ||
			len(s.marker.Sent) != 1 || s.marker.Sent[0] != (schemas.Range{First: 0, Count: uint32(n)}) {
			t.Errorf("wave %d: marker %+v after %d chunks; want wave %d, chunks [0,%d) after %d", wave, s.marker, s.after, wave, n, int(wave)*n)
		}
	}
	checkEgressMetrics(t, p, "wave", "wave_table", "wave_end")
}

// TestMissedCopies: a device asking for the table again missed the
// wave's copies only when one went out since it first asked, long enough
// ago to have reached it.
func TestMissedCopies(t *testing.T) {
	t0 := time.Unix(1000, 0)
	times := []time.Time{t0, t0.Add(10 * time.Second)}
	for _, tc := range []struct {
		name      string
		at, casts int
		now       time.Time
		want      bool
	}{
		{"no copy since it asked", 2, 2, t0.Add(time.Minute), false},
		{"a copy since, long ago", 0, 2, t0.Add(5 * time.Second), true},
		{"a copy since, just now: crossing", 1, 2, t0.Add(10*time.Second + 200*time.Millisecond), false},
		{"the copy since, past the crossing", 1, 2, t0.Add(12 * time.Second), true},
		{"casts ahead of the recorded times", 2, 3, t0.Add(time.Minute), false},
	} {
		if got := missedCopies(tc.at, tc.casts, times, tc.now, time.Second); got != tc.want {
			t.Errorf("%s: missed %v, want %v", tc.name, got, tc.want)
		}
	}
}
