package publisher

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// sendReport publishes a report as device dev on its own report topic, as
// the device would (over the broker, not into applyReport).
func (e *testEnv) sendReport(t *testing.T, r schemas.DeviceReport) {
	t.Helper()
	r.V, r.Time = schemas.Version, e.clock.Now().UnixMilli()
	b, err := schemas.Encode(&r)
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := e.cfg.Topics.Report(r.Device)
	if err := e.hub.Conn().Publish(context.Background(), rt, b, broker.PublishOptions{Family: broker.FamilyReport}); err != nil {
		t.Fatal(err)
	}
}

// TestFinalStateHolds: once a device has an outcome, no later report that
// is not a newer outcome moves it: not a progress report, not a rejection
// carrying the device's state with an error code (what a misrouted notice
// used to produce), not a failure, not a security event. Only a late
// outcome moves a timed-out device.
func TestFinalStateHolds(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.NoProgress = time.Minute; c.DefaultFailPermille = 1000 })
	ctx := context.Background()
	img := setupFleet(t, e, p, 3)
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img),
		Devices: []string{devName(0), devName(1), devName(2)}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string { return "notify" }, func() bool { return statusOf_(t, p, c.ID).Counts["pending"] == 3 })
	apply := func(r schemas.DeviceReport) reportResult {
		t.Helper()
		r.V, r.Campaign = schemas.Version, c.ID
		res, err := p.applyReport(ctx, &r, e.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	d0 := devName(0)
	for _, x := range []struct {
		r    schemas.DeviceReport
		want reportResult
	}{
		{schemas.DeviceReport{Device: d0, State: schemas.StateConfirmed, ActiveVersion: 2, Counter: 10}, "applied"},
		{schemas.DeviceReport{Device: d0, State: schemas.StateConfirmed, ActiveVersion: 2, Counter: 11,
			Code: schemas.CodeDeviceMismatch, Text: `notice for "dev-001", not this device`}, "repeated"},
		{schemas.DeviceReport{Device: d0, State: schemas.StateFailed, ActiveVersion: 2, Counter: 12, Code: schemas.CodeDigest}, "impossible"},
		{schemas.DeviceReport{Device: d0, State: schemas.StateDownloading, ActiveVersion: 2, Counter: 13}, "impossible"},
		{schemas.DeviceReport{Device: d0, State: schemas.StateRolledBack, ActiveVersion: 1, Counter: 14}, "impossible"},
	} {
		if got := apply(x.r); got != x.want {
			t.Errorf("%s %s #%d (%s): %s, want %s", x.r.Device, x.r.State, x.r.Counter, x.r.Code, got, x.want)
		}
	}
	st, _, _ := p.idx.dev(c.ID, d0)
	if st.State != DevState(schemas.StateConfirmed) || st.Code != "" || st.Counter != 10 {
		t.Errorf("confirmed device now %+v", st)
	}
	// A security event names no campaign and changes nothing.
	sec := schemas.DeviceReport{V: schemas.Version, Device: d0, State: schemas.StateConfirmed, ActiveVersion: 2, Counter: 15,
		Code: schemas.CodeUntrustedKey, Text: "notice refused", Security: true}
	if res, err := p.applyReport(ctx, &sec, e.clock.Now()); err != nil || res != "security-event" {
		t.Errorf("security event: %s %v", res, err)
	}
	// A timed-out device moves on its outcome only. Device 2 reports
	// progress half-way, so that it is still downloading when device 1
	// times out: the campaign (whose devices would otherwise all be final)
	// keeps running.
	e.clock.Advance(30 * time.Second)
	d2 := devName(2)
	if got := apply(schemas.DeviceReport{Device: d2, State: schemas.StateDownloading, ActiveVersion: 1, Counter: 3, BytesDone: 1, BytesTotal: 5000}); got != "applied" {
		t.Fatalf("progress of %s: %s, want applied", d2, got)
	}
	e.clock.Advance(45 * time.Second)
	d1 := devName(1)
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		s, _, _ := p.idx.dev(c.ID, d1)
		return s.State == StateTimedOut
	})
	if got := apply(schemas.DeviceReport{Device: d1, State: schemas.StateDownloading, ActiveVersion: 1, Counter: 3, BytesDone: 1, BytesTotal: 5000}); got != "final" {
		t.Errorf("timed-out device reporting progress: %s, want final", got)
	}
	if got := apply(schemas.DeviceReport{Device: d1, State: schemas.StateConfirmed, ActiveVersion: 2, Counter: 4}); got != "applied" {
		t.Errorf("timed-out device reporting its outcome: %s, want applied", got)
	}
	if s := statusOf_(t, p, c.ID); s.Counts["confirmed"] != 2 || s.State != CampaignRunning {
		t.Errorf("%s, counts %v; want running with 2 confirmed (one late)", s.State, s.Counts)
	}
	// Device 2 times out too: every device is final, the campaign ends.
	e.clock.Advance(time.Minute)
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State != CampaignRunning
	})
	if s := statusOf_(t, p, c.ID); s.Counts["confirmed"] != 2 || s.Counts["failed"] != 1 {
		t.Errorf("counts %v, want 2 confirmed (one late) and 1 timed out", s.Counts)
	}
}

// TestCampaignEndsWhenAllFinal: a phase whose devices have all ended
// without reaching the success threshold (one failure, under the failure
// threshold) cannot open the next phase; the campaign ends instead of
// staying "running" for ever. On the code before the fix it stayed
// running.
func TestCampaignEndsWhenAllFinal(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	img := setupFleet(t, e, p, 10)
	f := newFleet(e)
	for i := range 10 {
		f.add(devName(i), i == 2, false) // one failure in the first phase
	}
	lists := [][]string{{devName(0), devName(1), devName(2), devName(3)}, {devName(4), devName(5), devName(6), devName(7), devName(8), devName(9)}}
	c, err := p.CreatePhasedCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img),
		SuccessPermille: 1000, FailPermille: 500, Start: true}, lists)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State != CampaignRunning
	})
	s := statusOf_(t, p, c.ID)
	if s.State != CampaignAborted || s.Phase != 0 || s.Counts["confirmed"] != 3 || s.Counts["failed"] != 1 {
		t.Errorf("campaign %s phase %d counts %v (%s); want aborted in phase 0 with 3 confirmed, 1 failed", s.State, s.Phase, s.Counts, s.Reason)
	}
	t.Logf("ended: %s", s.Reason)
}

// TestDeviceDeadline: a device that keeps reporting without ever reaching
// an outcome (here: deferred by its policy, every minute) is timed out
// DeviceDeadline after its notice, and the campaign completes; a campaign
// never waits for a device for ever. On the code before the fix the
// device's reports kept it alive and the campaign ran on.
func TestDeviceDeadline(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) {
		c.NoProgress = 10 * time.Minute
		c.DeviceDeadline = time.Hour
		c.DefaultFailPermille = 1000
	})
	ctx := context.Background()
	img := setupFleet(t, e, p, 2)
	f := newFleet(e)
	f.add(devName(0), false, false)
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img),
		Devices: []string{devName(0), devName(1)}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).Counts["confirmed"] == 1 && statusOf_(t, p, c.ID).Counts["pending"] == 1
	})
	// Device 1 defers every few minutes, well within NoProgress.
	for i := range 13 {
		e.sendReport(t, schemas.DeviceReport{Device: devName(1), Campaign: c.ID, State: schemas.StateDeferred, ActiveVersion: 1,
			Counter: uint64(i + 1), Code: schemas.CodePolicy, Text: "outside the maintenance window"})
		waitFor(t, 5*time.Second, func() string { return "deferred report taken" }, func() bool {
			s, _, _ := p.idx.dev(c.ID, devName(1))
			return s.Counter == uint64(i+1) || s.State == StateTimedOut
		})
		awaitTicks(t, p, 2)
		if i < 12 && statusOf_(t, p, c.ID).State != CampaignRunning {
			t.Fatalf("campaign ended after %d min: %+v", i*5, statusOf_(t, p, c.ID))
		}
		e.clock.Advance(5 * time.Minute)
	}
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignCompleted
	})
	st, _, _ := p.idx.dev(c.ID, devName(1))
	if st.State != StateTimedOut || st.Code != schemas.CodeTimeout.String() {
		t.Errorf("deferring device %+v, want timed out", st)
	}
	t.Logf("deferring device: %s (%s)", st.State, st.Text)
}
