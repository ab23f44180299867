package faults

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/schemas"
)

// TestPowerCutEveryState cuts the power of one device in each state of
// the agent's state machine, over the real brokers and publisher: the
// agent is killed right after it persists the state and before the
// state's effect, its bootloader view is reopened from flash, and a new
// agent starts over the same flash and state directory. The first state
// the new agent enters must be one the table allows, and every device
// must end confirmed on v2. Cuts at chunk positions of a download, and
// the check that no chunk held in the slot is fetched again, are in
// deviceagent's TestResumeAfterKill (in-memory hub) and
// TestResumeOverBroker; bootctl's flash-level cuts are in its
// TestPowerCutExhaustive.
func TestPowerCutEveryState(t *testing.T) {
	t.Parallel()
	table := []struct {
		killed schemas.State
		next   []schemas.State // allowed first states after the restart; none = stays put
	}{
		{schemas.StateNotified, []schemas.State{schemas.StateManifestVerified}},
		{schemas.StateManifestVerified, []schemas.State{schemas.StateDownloading}},
		// Cut before the slot is erased: the state is written again
		// before the erase.
		{schemas.StateDownloading, []schemas.State{schemas.StateDownloading, schemas.StateCandidateVerified}},
		{schemas.StateCandidateVerified, []schemas.State{schemas.StateStaged}},
		{schemas.StateStaged, []schemas.State{schemas.StateRebooting}},
		{schemas.StateRebooting, []schemas.State{schemas.StateTrial}},
		{schemas.StateTrial, []schemas.State{schemas.StateConfirmed}},
		{schemas.StateConfirmed, nil},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	devices := len(table)
	var mu sync.Mutex
	killed := make([]bool, devices)
	after := make([][]schemas.State, devices) // states entered after the restart
	cuts := make(chan *device, devices)
	r := newRig(t, ctx, rigConfig{
		devices: devices,
		agent: func(d *device, c *deviceagent.Config) {
			next := c.OnState
			life := d.life()
			c.OnState = func(rec deviceagent.Record) {
				next(rec)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case killed[d.i]:
					after[d.i] = append(after[d.i], rec.State)
				case rec.State == table[d.i].killed:
					killed[d.i] = true
					life() // the power goes: the state is persisted, its effect never happens
					cuts <- d
				}
			}
		},
	})
	id := r.startCampaign(ctx)
	for range devices {
		select {
		case d := <-cuts:
			d.stop()
			d.powerCycle()
			d.start(ctx)
		case <-ctx.Done():
			t.Fatalf("not every device was cut: %v", r.deviceStates())
		}
	}
	r.finishAll(ctx, id)
	r.checkOnV2(r.devs)
	r.checkRefetch(persistEvery) // agents are killed: each may lose one interval of progress
	mu.Lock()
	defer mu.Unlock()
	for i, row := range table {
		var first schemas.State
		ok := len(row.next) == 0 && len(after[i]) == 0
		if len(after[i]) > 0 {
			first = after[i][0]
			for _, s := range row.next {
				ok = ok || s == first
			}
		}
		if !ok {
			t.Errorf("cut in %s: states after the restart %v, want the first in %v", row.killed, after[i], row.next)
		}
		t.Logf("cut in %-18s -> %v", row.killed, after[i])
	}
}
