package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/firmcast/firmcast/schemas"
)

// BenchmarkWaveEgress measures the publisher's chunk egress (encoded
// message bytes handed to the broker) per broadcast wave to 100 devices,
// relative to the image size, then the repair rounds until every device
// holds the image: requests are batched, chunks asked for by 2 or more
// devices are broadcast again, the rest sent to the one device asking.
// Loss applies to every chunk message, waves and repairs alike.
//
// The coded cases upload the image with Config.CodedRepair (a coded chunk
// table, blocks of blockcode.DefaultBlock chunks): repair rounds broadcast
// fresh parity chunks, per block as many as the requester lacking most in
// it lacks, and the devices rebuild what they lost from them.
func BenchmarkWaveEgress(b *testing.B) {
	for _, c := range []struct {
		name              string
		rate              float64
		correlated, burst bool
		coded             bool
		devices, size     int
	}{
		{"loss=0", 0, false, false, false, 100, 1 << 20},
		{"loss=5%-correlated", 0.05, true, false, false, 100, 1 << 20},
		{"loss=5%-independent", 0.05, false, false, false, 100, 1 << 20},
		{"coded/N=100/1MiB/loss=5%-independent", 0.05, false, false, true, 100, 1 << 20},
		{"coded/N=100/1MiB/loss=5%-burst8", 0.05, false, true, true, 100, 1 << 20},
		{"coded/N=100/8MiB/loss=5%-independent", 0.05, false, false, true, 100, 8 << 20},
		{"coded/N=100/8MiB/loss=5%-burst8", 0.05, false, true, true, 100, 8 << 20},
		{"coded/N=1000/8MiB/loss=5%-independent", 0.05, false, false, true, 1000, 8 << 20},
		{"coded/N=1000/8MiB/loss=5%-burst8", 0.05, false, true, true, 1000, 8 << 20},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := newEnv(b)
			// Every round asks again: no byte budget applies here.
			p, _ := e.start(func(cfg *Config) {
				cfg.ChunkSize, cfg.RepairBroadcastMin, cfg.WaveHold, cfg.DeviceImageBudget = 16<<10, 2, -1, 1e9
				cfg.CodedRepair = c.coded
				cfg.MaxDownloading = max(cfg.MaxDownloading, c.devices) // enrol waits for every notice
			})
			data := randomImage(b, c.size)
			img, _, err := p.UploadImage(context.Background(), e.who(p), "bench", bytes.NewReader(data))
			if err != nil {
				b.Fatal(err)
			}
			d, err := p.loadImage(context.Background(), img.Digest)
			if err != nil {
				b.Fatal(err)
			}
			var ids []string
			for i := range c.devices {
				ids = append(ids, fmt.Sprintf("d%04d", i))
			}
			camp := enrol(b, e, p, d.table, ids...)
			loss := &lossModel{rate: c.rate, correlated: c.correlated, burst: c.burst}
			loss.install(e.hub)
			var waveX, totalX, rounds float64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				var devs []*downloader
				for _, id := range ids {
					devs = append(devs, newDownloader(b, e.hub, e.cfg.Topics, id, d.table, loss))
				}
				w0, r0, u0 := p.dl.egress.Wave.Load(), p.dl.egress.Repair.Load(), p.dl.egress.Unicast.Load()
				b.StartTimer()
				loss.active.Store(true)
				if err := p.Wave(context.Background(), img.Digest); err != nil {
					b.Fatal(err)
				}
				waitFor(b, time.Minute, func() string { return "wave" }, e.hub.Idle)
				n := 0
				for ; n < 50; n++ {
					batch := &repairBatch{reqs: map[string]*schemas.ChunkRequest{}, start: time.Now()}
					for _, dv := range devs {
						if !dv.complete() {
							r := dv.requestMsg()
							r.Campaign = camp.ID
							p.dl.admit(camp.ID, dv.id) // as handleChunkRequest does
							batch.reqs[dv.id] = r
						}
					}
					if len(batch.reqs) == 0 {
						break
					}
					p.dl.flushRepair(context.Background(), img.Digest, batch)
					waitFor(b, time.Minute, func() string { return "repair" }, e.hub.Idle)
				}
				loss.active.Store(false)
				b.StopTimer()
				for _, dv := range devs {
					if !bytes.Equal(dv.data, data) {
						b.Fatalf("%s did not assemble the image", dv.id)
					}
					dv.tr.Close(context.Background())
				}
				w := p.dl.egress.Wave.Load() - w0
				all := w + p.dl.egress.Repair.Load() - r0 + p.dl.egress.Unicast.Load() - u0
				waveX += float64(w) / float64(len(data))
				totalX += float64(all) / float64(len(data))
				rounds += float64(n)
				b.StartTimer()
			}
			b.ReportMetric(waveX/float64(b.N), "wave-x-image")
			b.ReportMetric(totalX/float64(b.N), "total-x-image")
			b.ReportMetric(rounds/float64(b.N), "repair-rounds")
		})
	}
}

// requestMsg is request's message, for calling flushRepair directly.
func (d *downloader) requestMsg() *schemas.ChunkRequest {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := schemas.NewBitmap(d.table.NumChunks())
	covered := func(uint32) bool { return false }
	if d.col != nil {
		covered = d.col.Covered() // as fetcher.BrokerSource asks
	}
	for i := range d.table.NumChunks() {
		if !d.have.Has(i) && !covered(i) {
			want.Set(i)
		}
	}
	rt, _ := d.topics.ChunkReply(d.id)
	r := &schemas.ChunkRequest{V: schemas.Version, Image: d.table.Image, ChunkSize: d.table.ChunkSize, Bitmap: want, ReplyTo: rt.NATS, Requester: d.id}
	if d.col != nil {
		r.Protocol = schemas.ProtocolCoded // it takes parity
	}
	return r
}

// BenchmarkReportIngest measures reports per second taken into campaign
// state (decode, judge, compare-and-set of the device's KV record, index
// update) next to raw JetStream KV puts of same-size values with the same
// parallelism (the publisher's report workers), in the same run.
func BenchmarkReportIngest(b *testing.B) {
	const devices = 1000
	e := newEnv(b)
	p, _ := e.start(func(c *Config) { c.MaxDownloading = devices; c.TickInterval = 200 * time.Millisecond })
	ctx := context.Background()
	who := e.who(p)
	for i := range devices {
		if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: devName(i), Class: "sensor"}); err != nil {
			b.Fatal(err)
		}
	}
	img, _, err := p.UploadImage(ctx, who, "x", bytes.NewReader(randomImage(b, 4096)))
	if err != nil {
		b.Fatal(err)
	}
	digest, _ := hex.DecodeString(img.Digest)
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: digest, Envelope: testEnvelope(b, digest), Class: "sensor", Start: true})
	if err != nil {
		b.Fatal(err)
	}
	waitFor(b, time.Minute, func() string { return "notify" }, func() bool {
		s := statusOf_(nil, p, c.ID)
		return s.Counts["pending"] == devices
	})
	// Reports taken are counted by the publisher's reports metric.
	taken0, superseded0 := reportsTaken(p)
	// Same-size values for the raw put baseline.
	st, _, _ := p.idx.dev(c.ID, devName(0))
	st.State, st.Counter, st.BytesDone, st.BytesTotal = DevState(schemas.StateDownloading), 1<<40, 1<<20, 1<<21
	val, _ := json.Marshal(st)
	raw, err := e.js.CreateOrUpdateKeyValue(ctx, jetstreamKV("bench_raw"))
	if err != nil {
		b.Fatal(err)
	}
	counters := make([]uint64, devices)
	// Raw puts and reports alternate in rounds of 250, so both see the
	// same machine load; each side's rate is its total over its own time.
	const round = 250
	var rawTime, ingestTime time.Duration
	next := 0
	b.ResetTimer()
	for done := 0; done < b.N; done += round {
		n := min(round, b.N-done)
		t0 := time.Now()
		var wg sync.WaitGroup
		for w := range reportWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += reportWorkers {
					if _, err := raw.Put(ctx, devName((done+i)%devices), val); err != nil {
						panic(err)
					}
				}
			}()
		}
		wg.Wait()
		rawTime += time.Since(t0)
		t1 := time.Now()
		for range n {
			dev := next % devices
			next++
			counters[dev]++
			r := &schemas.DeviceReport{V: 1, Device: devName(dev), Campaign: c.ID, State: schemas.StateDownloading,
				BytesDone: counters[dev], BytesTotal: 1 << 21, Counter: counters[dev], ActiveVersion: 1, Time: 1}
			payload, _ := schemas.Encode(r)
			t, _ := e.cfg.Topics.Report(r.Device)
			p.handleReport(ctx, brokerMsg(t.NATS, payload))
		}
		want := float64(done + n)
		deadline := time.Now().Add(5 * time.Minute)
		for {
			if taken, _ := reportsTaken(p); taken-taken0 >= want {
				break
			}
			if time.Now().After(deadline) {
				taken, _ := reportsTaken(p)
				b.Fatalf("only %v of %v reports taken", taken-taken0, want)
			}
			time.Sleep(100 * time.Microsecond) // poll: the metric has no notification
		}
		ingestTime += time.Since(t1)
	}
	b.StopTimer()
	rawRate := float64(b.N) / rawTime.Seconds()
	rate := float64(b.N) / ingestTime.Seconds()
	b.ReportMetric(rate, "reports/s")
	b.ReportMetric(rawRate, "raw-puts/s")
	b.ReportMetric(rate/rawRate, "x-raw")
	_, superseded := reportsTaken(p)
	b.ReportMetric((superseded-superseded0)/float64(b.N), "superseded-frac")
	b.ReportMetric(float64(len(val)), "value-bytes")
}

// reportsTaken returns how many reports p has taken (any result) and how
// many of those were superseded, from its reports metric.
func reportsTaken(p *Publisher) (all, superseded float64) {
	ch := make(chan prometheus.Metric, 16)
	go func() {
		p.met.reports.Collect(ch)
		close(ch)
	}()
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			panic(err)
		}
		v := d.GetCounter().GetValue()
		all += v
		for _, l := range d.GetLabel() {
			if l.GetName() == "result" && l.GetValue() == "superseded" {
				superseded += v
			}
		}
	}
	return all, superseded
}
