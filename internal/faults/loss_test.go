package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// TestChunkLoss drops 5% and 20% of the chunk messages delivered to
// every device (whole messages, in the device's transport: what a lossy
// link does to QoS 0 broadcasts). The campaign must complete through
// repair with every device confirmed on v2, and the egress is reported
// relative to image size x devices: at the publisher (broadcast waves,
// repair broadcasts and unicast answers) and as delivered to the devices
// by the broker. At 5% loss the publisher's egress must stay within 1.3x
// image size x devices (what sending the image to every device once would
// cost).
func TestChunkLoss(t *testing.T) {
	t.Parallel()
	const devices = 16
	for _, loss := range []float64{0.05, 0.20} {
		name := fmt.Sprintf("loss-%02.0f%%", loss*100)
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			r := newRig(t, ctx, rigConfig{
				devices: devices,
				faults:  func(d *device, f *deviceFaults) { f.dropRate = loss },
			})
			id := r.startCampaign(ctx)
			st := r.waitStatus(ctx, id, "campaign ended", func(s publisher.Status) bool { return s.State != publisher.CampaignRunning })
			if st.State != publisher.CampaignCompleted || st.Counts["confirmed"] != devices {
				t.Errorf("campaign %s, counts %v; want completed with %d confirmed", st.State, st.Counts, devices)
			}
			r.waitDevices(ctx, "every device confirmed", func(s map[string]schemas.State) bool { return count(s, schemas.StateConfirmed) == devices })
			var dropped int64
			for _, d := range r.devs {
				d.stop()
				dropped += d.ft.dropped.Load()
			}
			r.checkOnV2(r.devs)
			if dropped == 0 {
				t.Errorf("no chunk message was dropped at %.0f%% loss: the fault hook did nothing", loss*100)
			}
			pub, _ := r.egress(name, devices)
			t.Logf("%s: %d chunk messages dropped on the devices' links", name, dropped)
			if loss <= 0.05 && pub > 1.3 {
				t.Errorf("at %.0f%% loss the publisher sent %.2fx image size x devices, want at most 1.3x", loss*100, pub)
			}
		})
	}
}
