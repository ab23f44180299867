package publisher

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math"
	"testing"
	"time"
)

// Requests that arrive while a wave is in flight get by unicast only the
// chunks the wave has already sent; the rest is left to the wave. Once no
// wave is in flight everything asked for is answered.
func TestRequestsLeftToWaveInFlight(t *testing.T) {
	for _, window := range []time.Duration{0, 20 * time.Millisecond} {
		t.Run(fmt.Sprintf("repair-window-%v", window), func(t *testing.T) {
			e := newEnv(t)
			p, _ := e.start(func(c *Config) { c.RepairWindow, c.WaveHold = window, -1 })
			data, table := uploadTable(t, e, p, 10*1024)
			enrol(t, e, p, table, devName(1), devName(2))
			n := table.NumChunks()
			half := n / 2
			// A wave in flight, about to send chunk half (white box: the
			// wave itself would race with the request).
			w := newWaveState()
			w.running = true
			w.next.Store(int64(half))
			p.dl.waveMu.Lock()
			p.dl.waves[hex.EncodeToString(table.Image)] = w
			p.dl.waveMu.Unlock()
			devs := []*downloader{newDownloader(t, e.hub, e.cfg.Topics, devName(1), table, nil), newDownloader(t, e.hub, e.cfg.Topics, devName(2), table, nil)}
			for _, d := range devs {
				d.request(t)
			}
			waitFor(t, 10*time.Second, func() string { return "answers" }, func() bool {
				for _, d := range devs {
					d.mu.Lock()
					got := d.got
					d.mu.Unlock()
					if got < int(half) {
						return false
					}
				}
				return e.hub.Idle()
			})
			for _, d := range devs {
				d.mu.Lock()
				for i := range n {
					if d.have.Has(i) != (i < half) {
						t.Errorf("%s: chunk %d held %v during the wave, want %v", d.id, i, d.have.Has(i), i < half)
					}
				}
				d.mu.Unlock()
			}
			w.next.Store(math.MaxInt64) // the wave is over
			for _, d := range devs {
				d.request(t)
			}
			waitFor(t, 10*time.Second, func() string { return "rest" }, func() bool { return devs[0].complete() && devs[1].complete() })
			for _, d := range devs {
				if !bytes.Equal(d.data, data) {
					t.Fatalf("%s: wrong image", d.id)
				}
			}
		})
	}
}
