package fleet

import (
	"context"
	"testing"
	"time"
)

// TestRunBenchSmall runs `firmcast bench`'s flow on a few devices over the
// embedded broker, with the files of both sides touched first (the
// default) and left cold: both sides complete on every device.
func TestRunBenchSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("a campaign")
	}
	for _, cold := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		rows, err := RunBench(ctx, BenchConfig{
			Cases: []string{"embedded"}, Devices: []int{4}, ImageSize: 64 << 10, ChunkSize: 4 << 10,
			Dir: t.TempDir(), Seed: 3, ColdPages: cold,
		})
		if err != nil {
			t.Fatalf("cold pages %v: %v", cold, err)
		}
		if len(rows) != 1 {
			t.Fatalf("cold pages %v: %d rows, want 1", cold, len(rows))
		}
		r := rows[0]
		if r.Raw.Complete != 4 || r.Raw.BadChunks != 0 || r.Firmcast.ConfirmedV2 != 4 {
			t.Errorf("cold pages %v: raw %d of 4 complete (%d bad chunks), firmcast %d of 4 on v2", cold, r.Raw.Complete, r.Raw.BadChunks, r.Firmcast.ConfirmedV2)
		}
		for side, l := range map[string][2]float64{"raw": r.RawSched, "firmcast": r.FcSched} {
			if l[1] <= 0 || l[0] > l[1] {
				t.Errorf("cold pages %v: %s scheduling latency p50 %v ms, p99 %v ms", cold, side, l[0], l[1])
			}
		}
	}
}
