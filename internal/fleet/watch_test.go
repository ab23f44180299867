package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
)

// TestRunStopsWhenBrokerDies kills the device broker (a mosquitto process
// the test owns) as the campaign starts, with the image paced so the
// campaign cannot finish first: the run must end within its deadline
// with ErrBrokerDown naming that broker and the devices that did not
// finish, instead of waiting for the campaign timeout.
func TestRunStopsWhenBrokerDies(t *testing.T) {
	mq := testutil.StartMosquitto(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	t0 := time.Now()
	var killed time.Time
	_, err := Run(ctx, Config{
		Devices: 6, ImageSize: 256 << 10, ChunkSize: 4096, Dir: t.TempDir(), Seed: 3, Logger: testLogger(t),
		MQTTURL: mq.URL(), Phases: []uint8{100}, Timeout: 80 * time.Second, BrokerDown: 2 * time.Second,
		// 16 KiB/s: the 256 KiB image takes far longer than the kill.
		Publisher: func(c *publisher.Config) { c.MaxBytesPerSecond = 16 << 10 },
		OnReady:   func(time.Duration) { mq.Stop(); killed = time.Now() },
	})
	if !errors.Is(err, ErrBrokerDown) {
		t.Fatalf("Run: %v, want ErrBrokerDown", err)
	}
	if !strings.Contains(err.Error(), mq.URL()) || !strings.Contains(err.Error(), "not finished") {
		t.Fatalf("the error names neither the broker %s nor the unfinished devices: %v", mq.URL(), err)
	}
	t.Logf("stopped %.1fs after the kill (%.1fs in all): %v", time.Since(killed).Seconds(), time.Since(t0).Seconds(), err)
}

// TestRunStopsWhenNothingMoves: a campaign whose devices hang in their
// post-boot self-test (nothing moves once they are all in trial) ends
// with ErrStalled after Stall, naming the devices, not after Timeout.
func TestRunStopsWhenNothingMoves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, err := Run(ctx, Config{
		Devices: 4, ImageSize: 64 << 10, ChunkSize: 4096, Dir: t.TempDir(), Seed: 4, Logger: testLogger(t),
		Phases: []uint8{100}, Timeout: 80 * time.Second, Stall: 3 * time.Second,
		Agent: func(c *deviceagent.Config) {
			c.SelfTest = func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
		},
	})
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Run: %v, want ErrStalled", err)
	}
	if !strings.Contains(err.Error(), "dev-") {
		t.Fatalf("the error names no device: %v", err)
	}
}
