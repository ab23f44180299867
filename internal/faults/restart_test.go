package faults

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// TestRestartMidCampaign kills and restarts, while devices are
// downloading, the MQTT broker (a mosquitto process: retained notices and
// sessions are lost), the NATS server (a nats-server process: its
// JetStream store is kept) and the publisher (stopped cleanly, or its
// connections dropped first as in a crash, so its leader lease must
// expire; then a new one started over the same NATS). Two set-ups: a
// fleet of 12 devices served by broadcast waves, and one device alone
// (40 chunks of 1 KiB, served by answers to its own chunk requests, on a
// mosquitto enforcing the access policy). The fault is injected while
// the first device to have verified `at` chunks (and not all) waits in
// its progress callback, so that it falls mid-download on every run.
// Every device must end confirmed on v2 (read from its bootloader and
// its agent's state file), the campaign must complete with every device
// confirmed, and no device may ask for a chunk it already held verified
// (counted in its transport against its flash).
func TestRestartMidCampaign(t *testing.T) {
	t.Parallel()
	fleet := rigConfig{
		devices: 12,
		// Throttled links (128 KiB/s per device) keep the downloads going
		// for about two seconds.
		faults: func(d *device, f *deviceFaults) { f.limiter = rate.NewLimiter(128<<10, 8<<10) },
	}
	alone := rigConfig{devices: 1, imageSize: 40 << 10, chunkSize: 1 << 10, policy: true}
	// A report a device makes while no publisher is subscribed is lost;
	// the new leader's reconcile (publisher Config.Reconcile, 2 s here)
	// sends the notice again and the device answers with its outcome, so
	// every case must complete.
	mosquitto := func(ctx context.Context, r *rig) { r.mq.Restart() }
	natsServer := func(ctx context.Context, r *rig) { r.ns.Restart() }
	pub := func(ctx context.Context, r *rig) { r.restartPublisher(ctx, false) }
	pubCrash := func(ctx context.Context, r *rig) { r.restartPublisher(ctx, true) }
	for _, tc := range []struct {
		name  string
		cfg   rigConfig
		at    int // chunks verified by the device the fault waits for
		fault func(ctx context.Context, r *rig)
	}{
		{"mosquitto", fleet, 16, mosquitto},
		{"nats-server", fleet, 16, natsServer},
		{"publisher", fleet, 16, pub},
		{"publisher-crash", fleet, 16, pubCrash},
		{"one-device/mosquitto", alone, 8, mosquitto},
		{"one-device/nats-server", alone, 8, natsServer},
		{"one-device/publisher", alone, 8, pub},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			devices := tc.cfg.devices
			cfg := tc.cfg
			var waiting atomic.Bool
			reached := make(chan *device, 1)
			resume := make(chan struct{})
			cfg.agent = func(d *device, c *deviceagent.Config) {
				next := c.OnProgress
				at := uint64(tc.at) * uint64(d.r.cfg.chunkSize)
				c.OnProgress = func(done, total uint64) {
					next(done, total)
					if done >= at && done < total && waiting.CompareAndSwap(false, true) {
						reached <- d
						<-resume // the agent waits while the fault is injected
					}
				}
			}
			r := newRig(t, ctx, cfg)
			var once sync.Once
			cont := func() { once.Do(func() { close(resume) }) }
			t.Cleanup(cont) // before the agents are stopped
			id := r.startCampaign(ctx)
			var v *device
			select {
			case v = <-reached:
			case <-ctx.Done():
				t.Fatalf("no device stopped between %d chunks verified and the end of its download: the fault was never injected; devices %v", tc.at, r.deviceStates())
			}
			before := r.deviceStates()
			if n := count(before, schemas.StateConfirmed); n == devices {
				t.Fatalf("all %d devices were confirmed before the fault: the scenario tested nothing", n)
			}
			tc.fault(ctx, r)
			cont()
			t.Logf("fault injected while %s waited with %d of %d bytes verified; %d of %d devices downloading, %d confirmed",
				v.id, v.verified.Load(), len(r.v2), count(before, schemas.StateDownloading), devices, count(before, schemas.StateConfirmed))
			r.waitDevices(ctx, "every device confirmed", func(s map[string]schemas.State) bool { return count(s, schemas.StateConfirmed) == devices })
			st, err := r.waitEnd(ctx, id)
			switch {
			case err != nil:
				t.Errorf("campaign not ended: %v; status %+v", err, st)
			case st.State != publisher.CampaignCompleted || st.Counts["confirmed"] != uint64(devices):
				t.Errorf("campaign %s, counts %v; want completed with %d confirmed", st.State, st.Counts, devices)
			}
			stopAll(r.devs)
			r.checkOnV2(r.devs)
			r.checkRefetch(0)
			r.egress(tc.name, devices)
		})
	}
}
