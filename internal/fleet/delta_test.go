package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/publisher"
)

// TestRunDeltaMixedSources: a fleet on two versions, v1 (held by the
// server) on two devices of three and v0 (not held) on the others, in one
// campaign to v2: all end confirmed, those on v1 by the delta the server
// made from v1, the others by the full image.
func TestRunDeltaMixedSources(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 9
	sum, err := Run(ctx, Config{Devices: n, ImageSize: 96 << 10, ChunkSize: 4096, Dir: t.TempDir(), Seed: 3,
		Delta: true, OtherSource: 3, Phases: []uint8{50, 100}, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("outcome %s: %d/%d confirmed, %d by the delta of %d bytes (image %d); publisher sent %d bytes",
		sum.Outcome, sum.ConfirmedV2, sum.Targeted, sum.ViaDelta, sum.DeltaSize, sum.ImageSize, sum.PublisherBytes)
	if sum.Outcome != "completed" || sum.ConfirmedV2 != n || sum.Targeted != n {
		t.Fatalf("outcome %s, %d/%d confirmed on v2 (targeted %d), problems %+v", sum.Outcome, sum.ConfirmedV2, n, sum.Targeted, sum.Problems)
	}
	if want := n - n/3; sum.ViaDelta != want {
		t.Errorf("%d devices applied the delta, want the %d on v1", sum.ViaDelta, want)
	}
	if sum.DeltaSize == 0 || sum.DeltaSize*10 > int64(sum.ImageSize) {
		t.Errorf("delta of %d bytes for a %d-byte image: want one, at most a tenth of it", sum.DeltaSize, sum.ImageSize)
	}
}

// TestDeltaWave: devices on the same source share one broadcast of the
// delta, even without repair batching (Config.RepairWindow 0: every
// request answered alone).
func TestDeltaWave(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 8
	sum, err := Run(ctx, Config{Devices: n, ImageSize: 512 << 10, ChunkSize: 1024, Dir: t.TempDir(), Seed: 5,
		Delta: true, Phases: []uint8{100}, Logger: testLogger(t),
		Publisher: func(c *publisher.Config) { c.RepairWindow = 0 }})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("outcome %s: %d/%d confirmed, %d by the delta of %d bytes; egress %v", sum.Outcome, sum.ConfirmedV2, n, sum.ViaDelta, sum.DeltaSize, sum.Egress)
	if sum.Outcome != "completed" || sum.ConfirmedV2 != n || sum.ViaDelta != n {
		t.Fatalf("outcome %s, %d/%d confirmed, %d by the delta: %+v", sum.Outcome, sum.ConfirmedV2, n, sum.ViaDelta, sum.Problems)
	}
	if sum.Egress["wave"] == 0 || sum.Egress["wave"] > 2*sum.DeltaSize+4096 {
		t.Errorf("wave egress %d bytes for a %d-byte delta: want it broadcast about once", sum.Egress["wave"], sum.DeltaSize)
	}
	if sum.Egress["unicast"] >= n*sum.DeltaSize {
		t.Errorf("unicast egress %d bytes: each of the %d devices was sent the %d-byte delta on its own", sum.Egress["unicast"], n, sum.DeltaSize)
	}
}
