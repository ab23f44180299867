package publisher

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// TestReconcileResendsNotice: the leader sends the notice of a device that
// stays silent for Reconcile again, at most once per Reconcile, and never
// to a device that reported recently.
func TestReconcileResendsNotice(t *testing.T) { scenarioReconcileResendsNotice(t, newEnv(t)) }

func scenarioReconcileResendsNotice(t *testing.T, e *testEnv) {
	p, _ := e.start(func(c *Config) { c.NoProgress = time.Hour; c.Reconcile = time.Minute })
	ctx := context.Background()
	img := setupFleet(t, e, p, 1)
	dev := devName(0)
	topic, err := e.cfg.Topics.Notice(dev)
	if err != nil {
		t.Fatal(err)
	}
	var notices atomic.Int64
	sub, err := e.hub.Conn().Subscribe(ctx, topic, func(_ context.Context, m broker.Message) {
		if len(m.Payload) > 0 {
			notices.Add(1)
		}
	}, broker.SubscribeOptions{Family: broker.FamilyNotice})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe(ctx)
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Devices: []string{dev}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string { return fmt.Sprintf("the first notice (%d received)", notices.Load()) }, func() bool { return notices.Load() == 1 })
	step := func(d time.Duration, want int64) {
		t.Helper()
		e.clock.Advance(d)
		awaitTicks(t, p, 3)
		waitFor(t, 5*time.Second, func() string { return "notice count" }, func() bool { return e.hub.Idle() })
		if got := notices.Load(); got != want {
			t.Fatalf("after %v more: %d notices, want %d", d, got, want)
		}
	}
	step(30*time.Second, 1) // silent for less than Reconcile
	step(31*time.Second, 2) // silent for Reconcile: sent again
	step(30*time.Second, 2) // sent again 30 s ago
	// A report resets the silence.
	rep := schemas.DeviceReport{V: schemas.Version, Device: dev, Campaign: c.ID, State: schemas.StateDownloading,
		ActiveVersion: 1, Counter: 1, Time: e.clock.Now().UnixMilli(), BytesDone: 10, BytesTotal: 5000}
	b, err := schemas.Encode(&rep)
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := e.cfg.Topics.Report(dev)
	if err := e.hub.Conn().Publish(ctx, rt, b, broker.PublishOptions{Family: broker.FamilyReport}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string { return "report taken" }, func() bool {
		return statusOf_(t, p, c.ID).Counts["downloading"] == 1
	})
	step(40*time.Second, 2) // 40 s after the report, 70 s after the last notice
	step(25*time.Second, 3) // 65 s after the report
}
