package faults

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestChunkLoss drops a share of the chunk messages delivered to every
// device (whole messages, in the device's transport: what a lossy link
// does to QoS 0 broadcasts): 5% and 20% for a fleet of 16 devices served
// by broadcast waves, and none (the baseline), 5% and 20% for one device
// alone (40 chunks of 1 KiB, served by answers to its own chunk
// requests, on a mosquitto enforcing the access policy). The campaign
// must complete through repair with every device confirmed on v2, no
// device may ask for a chunk it held verified, and the egress is
// reported relative to image size x devices: at the publisher
// (broadcast waves, repair broadcasts and unicast answers) and as
// delivered to the devices by the broker. The publisher's own chunk
// egress metrics must add up to what its transport published. At 5% loss
// or less the publisher's egress must stay within 1.3x image size x
// devices (what sending the image to every device once would cost).
func TestChunkLoss(t *testing.T) {
	t.Parallel()
	fleet := rigConfig{devices: 16}
	alone := rigConfig{devices: 1, imageSize: 40 << 10, chunkSize: 1 << 10, policy: true}
	for _, tc := range []struct {
		name string
		cfg  rigConfig
		loss float64
	}{
		{"", fleet, 0.05},
		{"", fleet, 0.20},
		{"one-device/", alone, 0},
		{"one-device/", alone, 0.05},
		{"one-device/", alone, 0.20},
	} {
		name := fmt.Sprintf("%sloss-%02.0f%%", tc.name, tc.loss*100)
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg := tc.cfg
			cfg.faults = func(d *device, f *deviceFaults) { f.dropRate = tc.loss }
			r := newRig(t, ctx, cfg)
			r.finishAll(ctx, r.startCampaign(ctx))
			var dropped int64
			for _, d := range r.devs {
				dropped += d.ft.dropped.Load()
			}
			r.checkOnV2(r.devs)
			r.checkRefetch(0)
			if tc.loss > 0 && dropped == 0 {
				t.Errorf("no chunk message was dropped at %.0f%% loss: the fault hook did nothing", tc.loss*100)
			}
			pub, _ := r.egress(name, cfg.devices)
			t.Logf("%s: %d chunk messages dropped on the devices' links", name, dropped)
			if tc.loss <= 0.05 && pub > 1.3 {
				t.Errorf("at %.0f%% loss the publisher sent %.2fx image size x devices, want at most 1.3x", tc.loss*100, pub)
			}
			r.checkEgressMetric()
		})
	}
}
