package fetcher

import (
	"context"
	"testing"
	"time"
)

// slowSource delivers its chunks as if each took step on the clock to
// arrive.
type slowSource struct {
	Source
	clk  *fakeClock
	step time.Duration
}

func (s slowSource) Fetch(ctx context.Context, im Image, want Chunks, deliver Deliver) error {
	return s.Source.Fetch(ctx, im, want, func(i int, data []byte) error {
		s.clk.Advance(s.step)
		return deliver(i, data)
	})
}

// TestProgressInterval checks that with ProgressInterval, OnProgress is
// called on time while chunks arrive, however seldom progress is
// persisted: a chunk every 10 s, an interval of one minute, PersistEvery
// far beyond the image.
func TestProgressInterval(t *testing.T) {
	const step, every = 10 * time.Second, time.Minute
	fx := newFixture(t, 40*testChunk, testChunk, 31)
	for _, tc := range []struct {
		name     string
		interval time.Duration
		want     int // timed calls
	}{
		{"interval", every, 40 * int(step) / int(every)}, // chunks 6, 12, ..., 36
		{"none", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			start := clk.Now()
			type call struct {
				p  Progress
				at time.Duration
			}
			var calls []call
			src := slowSource{Source: NewFileSource(fx.writeFiles(t, t.TempDir()), 0), clk: clk, step: step}
			f, err := New(Config{Sources: []Source{src}, StateDir: t.TempDir(), PersistEvery: 1000, Retry: fastRetry,
				Logger: testLogger(t), Clock: clk, ProgressInterval: tc.interval,
				OnProgress: func(p Progress) { calls = append(calls, call{p, clk.Now().Sub(start)}) }})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Fetch(context.Background(), fx.im, Plan{}, newMemSink(len(fx.img))); err != nil {
				t.Fatal(err)
			}
			timed := 0
			for _, c := range calls {
				if !c.p.Timed {
					continue
				}
				timed++
				if want := time.Duration(timed) * every; c.at != want || c.p.BytesDone != uint64(c.at/step)*testChunk {
					t.Errorf("timed call %d at %v with %d bytes, want at %v with %d", timed, c.at, c.p.BytesDone, want, uint64(want/step)*testChunk)
				}
			}
			if timed != tc.want {
				t.Errorf("%d timed calls, want %d (all calls: %+v)", timed, tc.want, calls)
			}
			if last := calls[len(calls)-1].p; last.Timed || last.BytesDone != fx.im.Size {
				t.Errorf("last call %+v, want the final one with every byte", last)
			}
		})
	}
}
