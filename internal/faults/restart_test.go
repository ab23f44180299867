package faults

import (
	"context"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// TestRestartMidCampaign kills and restarts, while devices are
// downloading, the MQTT broker (a mosquitto process: retained notices and
// sessions are lost), the NATS server (a nats-server process: its
// JetStream store is kept) and the publisher (stopped cleanly, or its
// connections dropped first as in a crash, so its leader lease must
// expire; then a new one started over the same NATS). Every device must end confirmed on v2 (read
// from its bootloader and its agent's state file), the campaign must
// complete with every device confirmed, and no device may ask again for
// more chunks it had already received intact than one persistence
// interval (counted at the publisher's transport).
func TestRestartMidCampaign(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault func(ctx context.Context, r *rig)
	}{
		// A report a device makes while no publisher is subscribed is
		// lost; the new leader's reconcile (publisher Config.Reconcile,
		// 2 s here) sends the notice again and the device answers with
		// its outcome, so every case must complete.
		{"mosquitto", func(ctx context.Context, r *rig) { r.mq.Restart() }},
		{"nats-server", func(ctx context.Context, r *rig) { r.ns.Restart() }},
		{"publisher", func(ctx context.Context, r *rig) { r.restartPublisher(ctx, false) }},
		{"publisher-crash", func(ctx context.Context, r *rig) { r.restartPublisher(ctx, true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			const devices = 12
			r := newRig(t, ctx, rigConfig{
				devices: devices,
				// Throttled links (128 KiB/s per device) keep the
				// downloads going for about two seconds.
				faults: func(d *device, f *deviceFaults) { f.limiter = rate.NewLimiter(128<<10, 8<<10) },
			})
			id := r.startCampaign(ctx)
			chunks := (len(r.v2) + int(r.cfg.chunkSize) - 1) / int(r.cfg.chunkSize)
			r.waitDevices(ctx, "downloads a quarter done", func(map[string]schemas.State) bool {
				n := 0
				for _, d := range r.devs {
					n += d.got.len()
				}
				return n >= devices*chunks/4
			})
			before := r.deviceStates()
			tc.fault(ctx, r)
			if n := count(before, schemas.StateConfirmed); n == devices {
				t.Fatalf("all %d devices were confirmed before the fault: the scenario tested nothing", n)
			}
			t.Logf("fault injected with %d of %d devices downloading, %d confirmed", count(before, schemas.StateDownloading), devices, count(before, schemas.StateConfirmed))
			r.waitDevices(ctx, "every device confirmed", func(s map[string]schemas.State) bool { return count(s, schemas.StateConfirmed) == devices })
			st, err := r.waitEnd(ctx, id)
			switch {
			case err != nil:
				t.Errorf("campaign not ended: %v; status %+v", err, st)
			case st.State != publisher.CampaignCompleted || st.Counts["confirmed"] != devices:
				t.Errorf("campaign %s, counts %v; want completed with %d confirmed", st.State, st.Counts, devices)
			}
			for _, d := range r.devs {
				d.stop()
			}
			r.checkOnV2(r.devs)
			r.checkRefetch()
			r.egress(tc.name, devices)
		})
	}
}
