package fleet

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	if os.Getenv("FLEET_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func TestRunEmbeddedAllConfirmed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := Run(ctx, Config{Devices: 10, ImageSize: 64 << 10, ChunkSize: 4096, Dir: t.TempDir(), Seed: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("summary: %+v", sum)
	if sum.Outcome != "completed" || sum.ConfirmedV2 != 10 || sum.Targeted != 10 {
		t.Fatalf("outcome %s, %d/%d confirmed on v2 (targeted %d), problems %+v", sum.Outcome, sum.ConfirmedV2, sum.Devices, sum.Targeted, sum.Problems)
	}
}

func TestRunFailRateAborts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// 20 devices, phases 50/100: the first phase opens 10, of which the
	// seeded choice makes half the fleet fail; the 10% threshold aborts.
	sum, err := Run(ctx, Config{Devices: 20, ImageSize: 32 << 10, ChunkSize: 4096, Dir: t.TempDir(), Seed: 7, FailRate: 0.5,
		Phases: []uint8{50, 100}, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if sum.Outcome != "aborted" {
		t.Fatalf("outcome %s (%s), want aborted; %+v", sum.Outcome, sum.Reason, sum)
	}
	if sum.RolledBack == 0 || sum.FailedBy["boot-failed"] != sum.RolledBack {
		t.Fatalf("rolled back %d, by reason %v; want rollbacks with boot-failed", sum.RolledBack, sum.FailedBy)
	}
	if sum.NotNotified == 0 {
		t.Fatalf("every device was notified; the abort should stop the rollout in phase 1: %+v", sum)
	}
	for _, p := range sum.Problems {
		if p.State == "rolled-back" && (p.Running != "v1" || !p.Planned || p.Reason == "") {
			t.Errorf("%s rolled back but runs %s (planned failure %v, reason %q)", p.Device, p.Running, p.Planned, p.Reason)
		}
	}
	if sum.ConfirmedV2+sum.RolledBack+sum.NotNotified+sum.InProgress+sum.Failed != sum.Devices {
		t.Errorf("outcomes do not add up to %d devices: %+v", sum.Devices, sum)
	}
}

func TestRunMachineBrokers(t *testing.T) {
	testutil.RequireBroker(t, testutil.MachineMosquittoURL)
	testutil.RequireBroker(t, testutil.MachineNATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	sum, err := Run(ctx, Config{Devices: 8, ImageSize: 48 << 10, ChunkSize: 4096, Dir: t.TempDir(), Seed: 3,
		MQTTURL: testutil.MachineMosquittoURL, NATSURL: testutil.MachineNATSURL, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if sum.Outcome != "completed" || sum.ConfirmedV2 != 8 {
		t.Fatalf("outcome %s, %d/8 confirmed on v2: %+v", sum.Outcome, sum.ConfirmedV2, sum.Problems)
	}
	// Nothing of the run is left on the shared NATS.
	nt, err := broker.DialNATS(ctx, broker.Config{URL: testutil.MachineNATSURL, Topics: schemas.MustTopics(sum.Root)})
	if err != nil {
		t.Fatal(err)
	}
	defer nt.Close(ctx)
	for n := range nt.JetStream().StreamNames(ctx).Name() {
		if strings.Contains(n, sum.Root) {
			t.Errorf("stream %s left on the machine's NATS", n)
		}
	}
	// No retained notice is left on the machine's Mosquitto.
	mt, err := broker.Dial(ctx, broker.Config{URL: testutil.MachineMosquittoURL, Topics: schemas.MustTopics(sum.Root)})
	if err != nil {
		t.Fatal(err)
	}
	defer mt.Close(ctx)
	got := make(chan string, 16)
	sub, err := mt.Subscribe(ctx, schemas.MustTopics(sum.Root).NoticesAll(), func(_ context.Context, m broker.Message) {
		if len(m.Payload) > 0 && !strings.Contains(m.Topic, "probe") {
			got <- m.Topic
		}
	}, broker.SubscribeOptions{Family: broker.FamilyNotice, Retained: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe(ctx)
	// A retained message is delivered right after SUBACK; a round trip
	// through the broker (our own publish) orders after it.
	probe, _ := schemas.MustTopics(sum.Root).Notice("probe")
	seen := make(chan struct{})
	psub, err := mt.Subscribe(ctx, probe, func(context.Context, broker.Message) { close(seen) }, broker.SubscribeOptions{Family: broker.FamilyNotice})
	if err != nil {
		t.Fatal(err)
	}
	defer psub.Unsubscribe(ctx)
	if err := mt.Publish(ctx, probe, []byte("x"), broker.PublishOptions{Family: broker.FamilyNotice}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-seen:
	case <-ctx.Done():
		t.Fatal("probe never came back")
	}
	select {
	case topic := <-got:
		t.Errorf("retained notice left on %s", topic)
	default:
	}
}

// TestHoldBoots: with HoldBoots (firmcast bench --hold-boots), no device
// passes its boot gate before every device of the fleet has staged.
func TestHoldBoots(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 8
	var mu sync.Mutex
	var lastStaged, firstBoot time.Time
	staged, booted := 0, 0
	agent := func(c *deviceagent.Config) {
		gate, onState := c.BootGate, c.OnState
		c.BootGate = func(ctx context.Context) (func(), error) {
			release, err := gate(ctx)
			if err == nil {
				mu.Lock()
				if booted++; firstBoot.IsZero() {
					firstBoot = time.Now()
				}
				mu.Unlock()
			}
			return release, err
		}
		c.OnState = func(r deviceagent.Record) {
			if r.State == schemas.StateStaged {
				mu.Lock()
				staged++
				lastStaged = time.Now()
				mu.Unlock()
			}
			onState(r)
		}
	}
	sum, err := Run(ctx, Config{Devices: n, ImageSize: 64 << 10, ChunkSize: 4096, Dir: t.TempDir(), Seed: 1, Logger: testLogger(t),
		Phases: []uint8{100}, HoldBoots: true, Agent: agent})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if sum.Outcome != "completed" || sum.ConfirmedV2 != n {
		t.Fatalf("outcome %s, %d/%d confirmed on v2, problems %+v", sum.Outcome, sum.ConfirmedV2, sum.Devices, sum.Problems)
	}
	mu.Lock()
	defer mu.Unlock()
	if staged < n || booted < n {
		t.Fatalf("%d staged, %d booted, want %d each", staged, booted, n)
	}
	if firstBoot.Before(lastStaged) {
		t.Errorf("a device booted %v before the last one staged", lastStaged.Sub(firstBoot))
	}
}
