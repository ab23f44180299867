package deviceagent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
)

// slowSource delivers the chunks of a source as if each took step on the
// agent's clock to arrive.
type slowSource struct {
	fetcher.Source
	clk  *fakeClock
	step time.Duration
	// after, when set, is called with each chunk delivered.
	after func(i int)
}

func (s slowSource) Fetch(ctx context.Context, im fetcher.Image, want fetcher.Chunks, deliver fetcher.Deliver) error {
	return s.Source.Fetch(ctx, im, want, func(i int, data []byte) error {
		s.clk.Set(s.clk.Now().Add(s.step))
		err := deliver(i, data)
		if err == nil && s.after != nil {
			s.after(i)
		}
		return err
	})
}

// TestProgressOnTime downloads from a slow source (a chunk every 10 s on
// the agent's clock) with PersistEvery beyond the image: the agent must
// still report its progress every ProgressInterval (default 1 minute),
// so that the publisher does not take the device for stalled.
func TestProgressOnTime(t *testing.T) {
	const step, interval = 10 * time.Second, time.Minute
	w := memWorld(t)
	v2 := testImage(12, 60*testChunk)
	tab, err := schemas.BuildChunkTable(bytes.NewReader(v2), testChunk)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := schemas.Encode(tab)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "v2.bin")
	if err := os.WriteFile(img, v2, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img+fetcher.TableSuffix, tb, 0o600); err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{now: time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)}
	d := w.newDevice("dev-slow", func(c *Config) {
		c.Clock = clk
		c.PersistEvery = 1000
		c.Prices = map[string]float64{"broker": 1} // the slow file source is the cheapest
		// A report is posted at each full minute; the source waits for
		// it to go out before the next chunk, as a real minute would
		// (on the fake clock, posts would outrun the sender and the
		// oldest be dropped beyond its queue).
		after := func(i int) {
			if (i+1)*int(step/time.Second)%int(interval/time.Second) != 0 || i+1 == 60 {
				return
			}
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for range 2000 {
				for _, r := range w.reportsOf("dev-slow") {
					if r.State == schemas.StateDownloading && r.BytesDone == uint64(i+1)*testChunk {
						return
					}
				}
				<-tick.C
			}
		}
		c.Sources = []fetcher.Source{slowSource{Source: fetcher.NewFileSource(img, 0), clk: clk, step: step, after: after}}
	})
	d.start()
	w.notice("camp-slow", "dev-slow", false, v2, w.envelope(v2, 2, nil, nil))
	w.waitReport("dev-slow", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	d.stop()
	var progress []schemas.DeviceReport
	var start int64
	for _, r := range w.reportsOf("dev-slow") {
		if r.State == schemas.StateDownloading && start == 0 {
			start = r.Time // the download starts: slot erased, nothing fetched yet
		}
		if r.State == schemas.StateDownloading && r.Text == "" && r.BytesDone > 0 {
			progress = append(progress, r)
		}
	}
	// 60 chunks of 10 s: a report at each full minute but the last (the
	// download is then complete and reports its next state instead).
	if want := 60*int(step/time.Second)/int(interval/time.Second) - 1; len(progress) != want {
		t.Fatalf("%d progress reports, want %d; reports:\n%s", len(progress), want, w.dump("dev-slow"))
	}
	for k, r := range progress {
		at := time.Duration(r.Time-start) * time.Millisecond
		want := time.Duration(k+1) * interval
		if at != want || r.BytesDone != uint64(want/step)*testChunk || r.BytesTotal != uint64(len(v2)) {
			t.Errorf("progress report %d at %v with %d of %d bytes, want at %v with %d of %d",
				k, at, r.BytesDone, r.BytesTotal, want, uint64(want/step)*testChunk, len(v2))
		}
	}
}
