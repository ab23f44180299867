package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// skewClock is a device clock off by a fixed amount.
type skewClock time.Duration

func (c skewClock) Now() time.Time { return time.Now().Add(time.Duration(c)) }

// TestClockSkew runs a campaign to devices whose clocks are a day ahead,
// a day behind, or right. With a manifest valid for two more days
// (use-before = the campaign's deadline) every device must be confirmed
// on v2: none refuses the manifest as expired, none rolls back, and the
// publisher (which judges progress by its own clock, NoProgress 5s here)
// times none of them out because of the time they put in their reports.
// The control case, a manifest valid for 12 more hours, shows the skew
// reaches the expiry check: exactly the devices a day ahead refuse it as
// expired and stay on v1.
func TestClockSkew(t *testing.T) {
	t.Parallel()
	skews := []time.Duration{24 * time.Hour, -24 * time.Hour, 0}
	const devices = 9
	for _, tc := range []struct {
		validFor    time.Duration
		wantExpired int
	}{{48 * time.Hour, 0}, {12 * time.Hour, devices / 3}} {
		t.Run(fmt.Sprintf("valid-%v", tc.validFor), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			r := newRig(t, ctx, rigConfig{
				devices:   devices,
				publisher: func(c *publisher.Config) { c.NoProgress = 5 * time.Second },
				agent: func(d *device, c *deviceagent.Config) {
					c.Clock = skewClock(skews[d.i%len(skews)])
				},
			})
			pi := r.publisher()
			img, _, err := pi.Pub.UploadImage(ctx, pi.Admin, "v2.bin", bytesReader(r.v2))
			if err != nil {
				t.Fatal(err)
			}
			id := r.createCampaign(ctx, publisher.CampaignRequest{Image: img.Digest, Phases: []int{100}, FailPermille: 500,
				Deadline: time.Now().Add(tc.validFor).Unix(), Start: true})
			st := r.waitStatus(ctx, id, "campaign ended", func(s publisher.Status) bool { return s.State != publisher.CampaignRunning })
			want := devices - tc.wantExpired
			if st.State != publisher.CampaignCompleted || st.Counts["confirmed"] != uint64(want) {
				t.Errorf("campaign %s, counts %v; want completed with %d confirmed", st.State, st.Counts, want)
			}
			r.waitDevices(ctx, "every device done", func(s map[string]schemas.State) bool {
				return count(s, schemas.StateConfirmed) == want && count(s, schemas.StateFailed) == tc.wantExpired
			})
			for _, d := range r.devs {
				d.stop()
			}
			var ahead, others []*device
			for _, d := range r.devs {
				if skews[d.i%len(skews)] > 0 && tc.wantExpired > 0 {
					ahead = append(ahead, d)
				} else {
					others = append(others, d)
				}
			}
			r.checkOnV2(others)
			r.checkOnV1(ahead)
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
			t.Logf("manifest valid for %v, device clocks +24h, -24h and right (%d each): %d confirmed on v2, %d refused it as expired, none rolled back",
				tc.validFor, devices/3, want, expired)
		})
	}
}
