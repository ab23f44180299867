package faults

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// skewClock is a device clock off by a fixed amount.
type skewClock time.Duration

func (c skewClock) Now() time.Time { return time.Now().Add(time.Duration(c)) }

// TestClockSkew runs a campaign to devices whose clocks are a day ahead,
// a day behind, or right, on a mosquitto enforcing the access policy.
// With a manifest valid for two more days (use-before = the campaign's
// deadline, signed by the publisher) every device must be confirmed on
// v2, at the manifest's sequence number (as the bootloader and the
// devices' reports say): none refuses the manifest as expired, none
// rolls back, and the publisher (which judges progress by its own clock,
// NoProgress 5s here) times none of them out because of the time they
// put in their reports. Then a replayed manifest with an older sequence
// number (another image, signed outside the publisher, no use-before)
// must be refused by every device as a rollback whatever its clock says
// (anti-rollback does not depend on time), and every device still runs
// v2. The control cases show the skew reaches the expiry check: with a
// manifest valid for 12 more hours exactly the devices a day ahead
// refuse it as expired and stay on v1; one that expired three days ago
// (signed outside the publisher, which refuses past deadlines) is refused
// as expired by every device.
func TestClockSkew(t *testing.T) {
	t.Parallel()
	skews := []time.Duration{24 * time.Hour, -24 * time.Hour, 0}
	const devices = 9
	for _, tc := range []struct {
		name        string
		validFor    time.Duration // use-before, from now
		wantExpired int
	}{
		{"valid-48h0m0s", 48 * time.Hour, 0},
		{"valid-12h0m0s", 12 * time.Hour, devices / 3},
		{"expired-72h0m0s-ago", -72 * time.Hour, devices},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			r := newRig(t, ctx, rigConfig{
				devices:   devices,
				policy:    true,
				publisher: func(c *publisher.Config) { c.NoProgress = 5 * time.Second },
				agent: func(d *device, c *deviceagent.Config) {
					c.Clock = skewClock(skews[d.i%len(skews)])
				},
			})
			req := publisher.CampaignRequest{Image: r.upload(ctx, "v2.bin", r.v2), Phases: []int{100}, FailPermille: 500, Start: true}
			useBefore := time.Now().Add(tc.validFor)
			if tc.validFor > 0 {
				req.Deadline = useBefore.Unix()
			} else {
				req.Envelope = r.envelope(ctx, r.v2, 2, useBefore)
				// Every device fails: the threshold trips (and the
				// campaign pauses, taking no more reports) only once
				// the last one has reported.
				req.FailPermille = 1000
			}
			id := r.createCampaign(ctx, req)
			want := devices - tc.wantExpired
			if want > 0 {
				st := r.waitStatus(ctx, id, "campaign ended", func(s publisher.Status) bool { return s.State != publisher.CampaignRunning })
				if st.State != publisher.CampaignCompleted || st.Counts["confirmed"] != uint64(want) {
					t.Errorf("campaign %s, counts %v; want completed with %d confirmed", st.State, st.Counts, want)
				}
			}
			r.waitDevices(ctx, "every device done", func(s map[string]schemas.State) bool {
				return count(s, schemas.StateConfirmed) == want && count(s, schemas.StateFailed) == tc.wantExpired
			})
			var refused, others []*device
			for _, d := range r.devs {
				if skews[d.i%len(skews)] > 0 && tc.wantExpired > 0 || tc.wantExpired == devices {
					refused = append(refused, d)
				} else {
					others = append(others, d)
				}
			}
			seq := r.checkSequence(ctx, id, want)
			// The agents persist a state before they report it: they are
			// stopped once the publisher has their reports.
			r.waitReported(ctx, id, refused, schemas.CodeExpired)
			stopAll(r.devs)
			r.checkOnV2(others)
			r.checkOnV1(refused)
			expired := 0
			for _, d := range r.devs {
				rec, err := deviceagent.LoadState(d.dir)
				if err != nil {
					t.Fatal(err)
				}
				switch rec.Code {
				case schemas.CodeExpired:
					expired++
				case schemas.CodeRollback, schemas.CodeBootFailed:
					t.Errorf("%s (clock %+v): %s %s", d.id, skews[d.i%len(skews)], rec.Code, rec.Text)
				}
			}
			if expired != tc.wantExpired {
				t.Errorf("%d devices refused the manifest as expired, want %d", expired, tc.wantExpired)
			}
			t.Logf("manifest use-before %v from now, device clocks +24h, -24h and right (%d each): %d confirmed on v2 (sequence %d), %d refused it as expired, none rolled back",
				tc.validFor, devices/3, want, seq, expired)
			if tc.wantExpired == 0 {
				r.replay(ctx, seq, skews)
			}
		})
	}
}

// checkSequence returns the sequence number of campaign id's manifest
// and checks that the want devices that confirmed it report that
// version as their active one.
func (r *rig) checkSequence(ctx context.Context, id string, want int) uint64 {
	r.t.Helper()
	c, err := r.publisher().Pub.Campaign(ctx, id)
	if err != nil {
		r.t.Fatal(err)
	}
	m, err := suit.Decode(c.Envelope)
	if err != nil {
		r.t.Fatal(err)
	}
	reported := 0
	for _, d := range r.devs {
		dd, err := r.publisher().Pub.DeviceDetail(ctx, d.id)
		if err != nil {
			r.t.Fatal(err)
		}
		for _, s := range dd.Campaigns {
			if s.Campaign == id && s.State == publisher.DevState(schemas.StateConfirmed) {
				reported++
				if s.ActiveVersion != m.Seq {
					r.t.Errorf("%s reported active version %d, want the manifest's sequence number %d", d.id, s.ActiveVersion, m.Seq)
				}
			}
		}
	}
	if reported != want {
		r.t.Errorf("the publisher holds %d confirmed reports, want %d", reported, want)
	}
	return m.Seq
}

// replay restarts the rig's stopped agents and runs a campaign of
// another image (v3) whose manifest, signed with the trusted key, has a
// sequence number older than seq, the one the devices run: every device
// must refuse it as a rollback, whatever its clock, and still run v2.
func (r *rig) replay(ctx context.Context, seq uint64, skews []time.Duration) {
	t := r.t
	t.Helper()
	for _, d := range r.devs {
		d.start(ctx)
	}
	v3 := image(3, r.cfg.imageSize)
	id := r.createCampaign(ctx, publisher.CampaignRequest{Image: r.upload(ctx, "v3.bin", v3),
		Envelope: r.envelope(ctx, v3, seq-1, time.Time{}), Phases: []int{100}, FailPermille: 1000, Start: true})
	n := len(r.devs)
	r.waitDevices(ctx, "every device refused the replay", func(s map[string]schemas.State) bool { return count(s, schemas.StateFailed) == n })
	r.waitReported(ctx, id, r.devs, schemas.CodeRollback)
	stopAll(r.devs)
	r.checkActive(r.devs, "v2", r.d2, seq)
	for _, d := range r.devs {
		rec, err := deviceagent.LoadState(d.dir)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Campaign != id || rec.Code != schemas.CodeRollback {
			t.Errorf("%s (clock %+v): campaign %s %s %s, want the replay (%s) refused as rollback", d.id, skews[d.i%len(skews)], rec.Campaign, rec.Code, rec.Text, id)
		}
	}
	t.Logf("replayed sequence %d (another image) after %d: %d of %d devices refused it as a rollback", seq-1, seq, n, n)
}

// waitReported waits until the publisher holds, for campaign id, a
// report with code from each of devs (what the devices told the backend,
// beside what they persisted).
func (r *rig) waitReported(ctx context.Context, id string, devs []*device, code schemas.ErrCode) {
	r.t.Helper()
	for _, d := range devs {
		var got publisher.DeviceState
		for {
			dd, err := r.publisher().Pub.DeviceDetail(ctx, d.id)
			if err == nil {
				for _, s := range dd.Campaigns {
					if s.Campaign == id {
						got = s
					}
				}
				if got.Code == code.String() {
					break
				}
			}
			select {
			case <-ctx.Done():
				r.t.Fatalf("%s: the publisher holds %s %s (%s) for campaign %s, want code %s (err %v)", d.id, got.State, got.Code, got.Text, id, code, err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}
