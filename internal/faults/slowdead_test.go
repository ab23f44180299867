package faults

import (
	"context"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// TestSlowAndDeadDevice runs one campaign with a slow device (its chunk
// deliveries throttled to 48 KiB/s) and a dead one (registered and
// targeted, but it never connects). Every other device must be confirmed
// while the slow one is still at it; the slow one must finish confirmed
// too, and the campaign must wait for it (the slow device is never timed
// out); the publisher must report the dead one as timed out (after
// NoProgress; counted as failed, reason timeout) and complete the
// campaign; the dead one still runs v1. NoProgress is 2 s, less than the
// default wave hold (3 s): the dead device never leaves pending, so the
// first wave is held as long as the hold allows, and the hold must be
// capped (at NoProgress/2) for the devices waiting for it not to be timed
// out. The agents report download progress at least every 200 ms while
// chunks arrive (the slow device gets one about every 85 ms), well inside
// NoProgress on a loaded machine.
func TestSlowAndDeadDevice(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const devices, slow, dead = 12, 0, 1
	r := newRig(t, ctx, rigConfig{
		devices:   devices,
		dead:      map[int]bool{dead: true},
		publisher: func(c *publisher.Config) { c.NoProgress = 2 * time.Second },
		agent:     func(d *device, c *deviceagent.Config) { c.ProgressInterval = 200 * time.Millisecond },
		faults: func(d *device, f *deviceFaults) {
			if d.i == slow {
				f.limiter = rate.NewLimiter(48<<10, 8<<10)
			}
		},
	})
	id := r.startCampaign(ctx)
	var others []*device
	for _, d := range r.devs {
		if d.i != slow && d.i != dead {
			others = append(others, d)
		}
	}
	r.waitDevices(ctx, "every other device confirmed", func(s map[string]schemas.State) bool {
		for _, d := range others {
			if s[d.id] != schemas.StateConfirmed {
				return false
			}
		}
		return true
	})
	slowAt := schemas.State(r.devs[slow].state.Load())
	slowGot := r.devs[slow].got.len()
	t.Logf("the %d other devices are confirmed; the slow device is %s with %d chunks", len(others), slowAt, slowGot)
	if slowAt == schemas.StateConfirmed {
		t.Errorf("the slow device finished no later than the others: the throttle did not slow it")
	}
	// The slow device must never be timed out: the campaign waits for it
	// (it ends only once the slow device's agent is confirmed), and no
	// status read while it runs counts more than the dead device as
	// timed out.
	var timedOut uint64
	st := r.waitStatus(ctx, id, "campaign ended", func(s publisher.Status) bool {
		timedOut = max(timedOut, s.Counts["failed.timeout"])
		return s.State != publisher.CampaignRunning
	})
	if s := schemas.State(r.devs[slow].state.Load()); s != schemas.StateConfirmed || timedOut > 1 {
		t.Errorf("the campaign ended while the slow device was %s, up to %d devices counted as timed out: the slow device was timed out", s, timedOut)
	}
	if st.State != publisher.CampaignCompleted || st.Counts["confirmed"] != devices-1 || st.Counts["failed"] != 1 || st.Counts["failed.timeout"] != 1 {
		t.Errorf("campaign %s, counts %v; want completed with %d confirmed and 1 failed, reason timeout (the dead device)", st.State, st.Counts, devices-1)
	}
	t.Logf("campaign %s, counts %v", st.State, st.Counts)
	dd, err := r.publisher().Pub.DeviceDetail(ctx, r.devs[dead].id)
	if err != nil {
		t.Fatal(err)
	}
	if len(dd.Campaigns) != 1 || dd.Campaigns[0].State != publisher.StateTimedOut || dd.Campaigns[0].Code != schemas.CodeTimeout.String() {
		t.Errorf("dead device's campaign state %+v, want timed-out with code %s", dd.Campaigns, schemas.CodeTimeout)
	} else {
		t.Logf("dead device: %s (%s)", dd.Campaigns[0].State, dd.Campaigns[0].Text)
	}
	r.waitDevices(ctx, "slow device confirmed", func(s map[string]schemas.State) bool { return s[r.devs[slow].id] == schemas.StateConfirmed })
	stopAll(r.devs)
	r.checkOnV2(append(others, r.devs[slow]))
	r.checkOnV1(r.devs[dead : dead+1])
}
