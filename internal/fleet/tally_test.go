package fleet

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestTallyAdd checks that the tallies of a fleet's shares add up, with
// at most 10 devices named and every share's failure kept.
func TestTallyAdd(t *testing.T) {
	names := func(prefix string, n int) []string {
		var s []string
		for i := range n {
			s = append(s, fmt.Sprintf("%s-%d (idle)", prefix, i))
		}
		return s
	}
	tests := []struct {
		name   string
		shares []Tally
		want   Tally
	}{
		{"none", nil, Tally{}},
		{"one", []Tally{{Devices: 2, States: map[string]int{"idle": 2}, RxBytes: 5, Busy: 1, Unfinished: 2, Examples: names("a", 2)}},
			Tally{Devices: 2, States: map[string]int{"idle": 2}, RxBytes: 5, Busy: 1, Unfinished: 2, Examples: names("a", 2)}},
		{"two, examples bounded", []Tally{
			{Devices: 8, States: map[string]int{"idle": 8}, RxBytes: 1, Unfinished: 8, Examples: names("a", 8)},
			{Devices: 8, States: map[string]int{"idle": 6, "confirmed": 2}, RxBytes: 2, Busy: 3, Unfinished: 6, Examples: names("b", 6)},
		}, Tally{Devices: 16, States: map[string]int{"idle": 14, "confirmed": 2}, RxBytes: 3, Busy: 3, Unfinished: 14,
			Examples: append(names("a", 8), names("b", 2)...)}},
		{"failures joined", []Tally{{Failed: "share 1 exited"}, {Devices: 1}, {Failed: "share 3 exited"}},
			Tally{Devices: 1, Failed: "share 1 exited; share 3 exited"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Tally{States: map[string]int{}}
			for _, s := range tc.shares {
				got.Add(s)
			}
			if tc.want.States == nil {
				tc.want.States = map[string]int{}
			}
			if d := cmp.Diff(got, tc.want); d != "" {
				t.Errorf("(-got +want)\n%s", d)
			}
		})
	}
}

// TestOutcomeAdd checks that the outcomes of a fleet's shares add up:
// counts summed, problems merged in device order, the latest times and
// the first share's flash kept.
func TestOutcomeAdd(t *testing.T) {
	a := Outcome{Devices: 3, ConfirmedV2: 1, OnV1: 2, RolledBack: 1, FailedBy: map[string]int{"self-test": 1}, NotNotified: 1,
		DeviceBytes: 10, LastStaged: 5, LastDone: 9, FirstFlash: "a/flash",
		Problems: []DeviceOutcome{{Device: "d-0003", State: "rolled-back", Running: "v1"}}}
	b := Outcome{Devices: 2, ConfirmedV2: 1, Failed: 1, InProgress: 0, FailedBy: map[string]int{"self-test": 2, "digest": 1},
		DeviceBytes: 7, LastStaged: 6, LastDone: 8, FirstFlash: "b/flash",
		Problems: []DeviceOutcome{{Device: "d-0001", State: "failed", Running: "v1"}}}
	got := Outcome{}
	got.Add(a)
	got.Add(b)
	want := Outcome{Devices: 5, ConfirmedV2: 2, OnV1: 2, RolledBack: 1, Failed: 1, NotNotified: 1,
		FailedBy: map[string]int{"self-test": 3, "digest": 1}, DeviceBytes: 17, LastStaged: 6, LastDone: 9, FirstFlash: "a/flash",
		Problems: []DeviceOutcome{{Device: "d-0001", State: "failed", Running: "v1"}, {Device: "d-0003", State: "rolled-back", Running: "v1"}}}
	if d := cmp.Diff(got, want); d != "" {
		t.Errorf("(-got +want)\n%s", d)
	}
}

// TestFleetShares checks that the shares of a fleet (First, FleetSize)
// name the same devices and choose the same failing ones as the whole
// fleet.
func TestFleetShares(t *testing.T) {
	key := testutil.SigningKey(t, "es256")
	cfg := FleetConfig{
		Devices: 10, Prefix: "d", Topics: schemas.MustTopics("fleetshares"), Trust: suit.TrustAnchors{key.Public()},
		Factory: Image(1, "factory", 4096), FailRate: 0.3, Seed: 7, MemFlash: true,
	}
	failing := func(cfg FleetConfig) map[string]bool {
		t.Helper()
		cfg.Dir = t.TempDir()
		f, err := NewFleet(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		m := map[string]bool{}
		for _, d := range f.Devices {
			m[d.ID] = d.FailHealth
		}
		return m
	}
	whole := failing(cfg)
	shares := map[string]bool{}
	for _, r := range [][2]int{{0, 3}, {3, 4}, {7, 3}} {
		c := cfg
		c.First, c.Devices, c.FleetSize = r[0], r[1], 10
		for id, f := range failing(c) {
			shares[id] = f
		}
	}
	if d := cmp.Diff(shares, whole); d != "" {
		t.Errorf("shares vs the whole fleet (-shares +whole)\n%s", d)
	}
	n := 0
	for _, f := range whole {
		if f {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d failing devices, want 3", n)
	}
	c := cfg
	c.First, c.FleetSize, c.Dir = 5, 10, t.TempDir()
	if _, err := NewFleet(context.Background(), c); err == nil {
		t.Error("devices 6..15 of a fleet of 10 accepted")
	}
}

// TestMemClasses: the "rss peak" line's memory classes are all read
// (a renamed runtime metric would silently drop one).
func TestMemClasses(t *testing.T) {
	attrs := memClasses()
	if len(attrs) != 2*len(memClassNames) {
		t.Fatalf("memClasses returned %v, want every one of %d classes", attrs, len(memClassNames))
	}
	for i := 0; i < len(attrs); i += 2 {
		if attrs[i] == "goroutines" && attrs[i+1].(uint64) == 0 {
			t.Errorf("0 goroutines: %v", attrs)
		}
	}
}
