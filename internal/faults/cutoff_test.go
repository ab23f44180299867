package faults

import (
	"context"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/schemas"
)

// TestCutOffBeyondRetryCap cuts one device's network link mid-download
// (its connection through a TCP proxy is closed and its reconnection
// attempts are refused) for longer than its retry cap and until it has
// failed to reconnect several times, then restores the link. It must
// resume, report, and end confirmed on v2, without fetching again
// a chunk it held; the campaign must complete with every device
// confirmed. Mosquitto enforces the access policy: the devices log in
// again with their own accounts when the link returns.
func TestCutOffBeyondRetryCap(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const devices, victim = 6, 0
	const retryCap = 400 * time.Millisecond
	r := newRig(t, ctx, rigConfig{
		devices: devices,
		policy:  true,
		linked:  map[int]bool{victim: true},
		// The victim's link is throttled (64 KiB/s) so that the cut
		// comes mid-download.
		faults: func(d *device, f *deviceFaults) {
			if d.i == victim {
				f.limiter = rate.NewLimiter(64<<10, 8<<10)
			}
		},
		agent: func(d *device, c *deviceagent.Config) {
			if d.i == victim {
				c.RetryBase, c.RetryCap, c.ChunkIdle = 200*time.Millisecond, retryCap, 200*time.Millisecond
			}
		},
	})
	v := r.devs[victim]
	id := r.startCampaign(ctx)
	chunks := (len(r.v2) + int(r.cfg.chunkSize) - 1) / int(r.cfg.chunkSize)
	r.waitDevices(ctx, "victim a quarter done", func(map[string]schemas.State) bool { return v.got.len() >= chunks/4 })
	v.link.cut()
	cutAt := time.Now()
	held := v.got.len()
	t.Logf("link cut with %d of %d chunks received", held, chunks)
	// Keep the link down for ten retry caps and until the device has
	// failed to reconnect three times.
	r.waitDevices(ctx, "reconnections refused", func(map[string]schemas.State) bool {
		return v.link.refused.Load() >= 3 && time.Since(cutAt) > 10*retryCap
	})
	rec, err := deviceagent.LoadState(v.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %v cut off (%d reconnections refused): agent state %s, attempts %d, %s %s",
		time.Since(cutAt).Round(time.Millisecond), v.link.refused.Load(), rec.State, rec.Attempts, rec.Code, rec.Text)
	// Chunks already buffered on the device's side of the link are still
	// delivered after the cut (the throttle is in the device), but the
	// download must not have completed.
	if rec.State != schemas.StateDownloading {
		t.Fatalf("the device reached %s while cut off: the cut came too late to test anything", rec.State)
	}
	v.link.restore()
	r.finishAll(ctx, id)
	r.checkOnV2(r.devs)
	r.checkRefetch(0)
}
