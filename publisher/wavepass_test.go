package publisher

import (
	"context"
	"encoding/hex"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// A device that joins while a wave flows missed what the wave sent before
// it listened: the wave goes round again from the carousel's start only
// as far as the last joiner missed, not a second whole wave.
func TestWavePassForLateJoiners(t *testing.T) {
	e := newEnv(t)
	// Echo pacing keeps the wave near what subscribers were handed.
	p, _ := e.start(func(c *Config) { c.BroadcastMin, c.WaveEcho = 2, 8 })
	_, table := uploadTable(t, e, p, 1000*1024) // 1000 chunks of 1 KiB
	n := int(table.NumChunks())
	digest := hex.EncodeToString(table.Image)
	ct, _ := e.cfg.Topics.Chunks(digest)
	var (
		mu      sync.Mutex
		chunks  int
		markers []schemas.WaveEnd
		joinTo  int64 = -1
	)
	const joinAt = 100
	conn := e.hub.Conn()
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Subscribe(context.Background(), ct, func(_ context.Context, m broker.Message) {
		mu.Lock()
		defer mu.Unlock()
		if schemas.IsChunk(m.Payload) {
			chunks++
			if chunks == joinAt {
				// Two devices join here (white box: as sendTable and
				// tableByWave record a first table).
				w := p.dl.waveFor(digest)
				p.dl.waveMu.Lock()
				w.joined(n)
				w.joined(n)
				joinTo = w.joinTo
				p.dl.waveMu.Unlock()
			}
			return
		}
		var we schemas.WaveEnd
		if schemas.Decode(m.Payload, &we) == nil {
			markers = append(markers, we)
		}
	}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
		t.Fatal(err)
	}
	if err := p.Wave(context.Background(), digest); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() string { return "two markers" }, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(markers) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	if joinTo < joinAt || joinTo >= int64(n) {
		t.Fatalf("joiners recorded up to %d; want in [%d,%d)", joinTo, joinAt, n)
	}
	if chunks != n+int(joinTo) {
		t.Errorf("%d chunks broadcast; want %d (a whole pass, then %d for the joiners)", chunks, n+int(joinTo), joinTo)
	}
	sent := 0
	for _, r := range markers[1].Sent {
		sent += int(r.Count)
	}
	if markers[1].Wave != markers[0].Wave+1 || sent != int(joinTo) {
		t.Errorf("second marker %+v (%d chunks); want wave %d, %d chunks", markers[1], sent, markers[0].Wave+1, joinTo)
	}
	if a := p.dl.waveAhead(digest); !a.none() {
		t.Errorf("after the wave: %+v still coming", a)
	}
}

func TestWaveStateJoined(t *testing.T) {
	const n = 1000
	for _, tc := range []struct {
		name      string
		next, end int64
		want      int64 // joinTo; -1: not counted
	}{
		{"no wave", math.MaxInt64, math.MaxInt64, -1},
		{"full pass, early", 10, n, 10 + tableEvery},
		{"full pass, near its end", n - 5, n, n},
		{"partial pass", 10, 300, n},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWaveState()
			w.next.Store(tc.next)
			w.end.Store(tc.end)
			w.joined(n)
			got := w.joinTo
			if w.joiners == 0 {
				got = -1
			}
			if got != tc.want {
				t.Errorf("joinTo %d (joiners %d); want %d", w.joinTo, w.joiners, tc.want)
			}
		})
	}
}

func TestWavePaceRevise(t *testing.T) {
	const every = 100 * time.Millisecond
	mk := func(rates ...float64) *wavePace {
		wp := newWavePace(every, 64<<10)
		now := time.Now()
		for i, r := range rates {
			wp.rates[devName(i)] = rateSample{bps: r, at: now}
		}
		return wp
	}
	for _, tc := range []struct {
		name   string
		rates  []float64
		lim    float64 // the limit before; 0: none
		sent   float64 // bytes per second the wave sent since the last revision
		want   float64 // the limit after; 0: none
		approx bool
		before float64 // bytes per second it sent over the revision before; 0: none
	}{
		{"too few reports", []float64{1e5, 1e5}, 0, 1e6, 0, false, 0},
		{"devices keep up", []float64{1e6, 1e6, 1e6, 1e6}, 0, 1e6, 0, false, 0},
		{"devices fall behind", []float64{2e5, 2e5, 2e5, 1e6}, 0, 1e6, 1e6 * wavePaceCut, true, 0},
		{"a few fall behind", []float64{2e5, 1e6, 1e6, 1e6}, 0, 1e6, 0, false, 0},
		{"devices fall a little behind", []float64{6e5, 6e5, 6e5, 1e6}, 0, 1e6, 6e5 * wavePaceOver, true, 0},
		{"never below the floor", []float64{1, 1, 1, 1}, 0, 1e5, wavePaceFloor, false, 0},
		{"raised while they keep up", []float64{4e5, 4e5, 4e5, 4e5}, 4e5, 4e5, 4e5 * wavePaceRaise, true, 0},
		{"lifted well above what is sent", []float64{4e5, 4e5, 4e5, 4e5}, 1e6, 4e5, 0, false, 0},
		{"raised to what they take", []float64{6e5, 6e5, 6e5, 6e5}, 4e5, 4e5, 6e5 * wavePaceOver, true, 0},
		{"lifted: they take far more", []float64{1.4e6, 1.4e6, 1.4e6, 1.4e6}, 5e5, 5e5, 0, false, 0},
		{"sped up since their rates", []float64{5e5, 5e5, 5e5, 5e5}, 0, 1e6, 0, false, 5e5},
		{"slowed down since, behind both", []float64{2e5, 2e5, 2e5, 2e5}, 0, 1e6, 8e5 * wavePaceCut, true, 8e5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wp := mk(tc.rates...)
			if tc.lim > 0 {
				wp.set(tc.lim)
			}
			now := time.Now()
			wp.rev = now.Add(-time.Second)
			wp.sent, wp.before = int64(tc.sent), tc.before
			wp.revise(now)
			got := 0.0
			if wp.lim != nil {
				got = float64(wp.lim.Limit())
			}
			if d := got - tc.want; d > 1 || d < -1 {
				if !tc.approx || d > tc.want/100 || d < -tc.want/100 {
					t.Errorf("limit %.0f B/s; want %.0f", got, tc.want)
				}
			}
		})
	}
}

// A device's rate is taken over at least wavePaceSpan of its own time.
func TestWavePaceObserve(t *testing.T) {
	wp := newWavePace(time.Second, 64<<10)
	wp.observe("d", 1000, 100_000)
	wp.observe("d", 1250, 200_000) // too short a span
	if _, ok := wp.rates["d"]; ok {
		t.Fatal("rate taken over 250ms")
	}
	wp.observe("d", 2000, 600_000)
	if r := wp.rates["d"].bps; r != 500_000 {
		t.Fatalf("rate %.0f B/s; want 500000", r)
	}
	wp.observe("d", 1500, 600_000) // out of order: a new span starts
	if r := wp.rates["d"].bps; r != 500_000 {
		t.Fatalf("rate %.0f B/s after an out-of-order report; want 500000", r)
	}
	// The wait before the wave's first chunk is no part of a span.
	wp.observe("e", 1000, 0)
	wp.observe("e", 3000, 100_000)
	wp.observe("e", 3500, 600_000) // too short a span from the first bytes
	if _, ok := wp.rates["e"]; ok {
		t.Fatalf("rate %.0f B/s taken over the wait for the wave", wp.rates["e"].bps)
	}
	wp.observe("e", 4000, 1_100_000)
	if r := wp.rates["e"].bps; r != 1_000_000 {
		t.Fatalf("rate %.0f B/s; want 1000000 (from the first bytes)", r)
	}
}
