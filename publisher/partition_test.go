package publisher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

func TestDevicePartition(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 7, MaxPartitions} {
		hit := map[int]bool{}
		for i := range 200 {
			d := fmt.Sprintf("dev-%d", i)
			k := devicePartition(d, n)
			if k != devicePartition(d, n) {
				t.Fatalf("%s: partition not stable", d)
			}
			if k < 0 || (n > 1 && k >= n) || (n <= 1 && k != 0) {
				t.Fatalf("%s: partition %d of %d", d, k, n)
			}
			hit[k] = true
		}
		if want := min(max(n, 1), 200); n <= 7 && len(hit) != want {
			t.Errorf("%d partitions: 200 devices hit %d of them", n, len(hit))
		}
	}
	for _, tc := range []struct {
		i    int
		want string
	}{{0, "ns_campdev"}, {1, "ns_campdev_p1"}, {12, "ns_campdev_p12"}} {
		if got := partitionBucket("ns", tc.i); got != tc.want {
			t.Errorf("partitionBucket(%d) = %q, want %q", tc.i, got, tc.want)
		}
	}
}

// A campaign runs to completion with its per-device state in three
// partitions: each device's record in its own partition's bucket only,
// the counts whole, a device's history read from the event stream that
// sources every partition.
func TestPartitionedCampaignCompletes(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.Partitions = 3 })
	ctx := context.Background()
	const n = 12
	img := setupFleet(t, e, p, n)
	f := newFleet(e)
	for i := range n {
		f.add(devName(i), false, false)
	}
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Phases: []uint8{50, 100}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignCompleted
	})
	if s := statusOf_(t, p, c.ID); s.Counts["confirmed"] != n {
		t.Errorf("completed with %+v, want %d confirmed", s, n)
	}
	if len(p.st.campdev.kvs) != 3 {
		t.Fatalf("%d partitions, want 3", len(p.st.campdev.kvs))
	}
	used := map[int]bool{}
	for i := range n {
		dev := devName(i)
		home := devicePartition(dev, 3)
		used[home] = true
		for k, kv := range p.st.campdev.kvs {
			_, err := kv.Get(ctx, devKey(c.ID, dev))
			if k == home && err != nil {
				t.Errorf("%s: not in its partition %d: %v", dev, k, err)
			}
			if k != home && err == nil {
				t.Errorf("%s: in partition %d, its home is %d", dev, k, home)
			}
		}
	}
	if len(used) < 2 {
		t.Errorf("%d devices all in one partition", n)
	}
	// The event stream sources each partition some milliseconds after a
	// write.
	for i := range 3 {
		dev := devName(i)
		var h []DeviceState
		waitFor(t, 10*time.Second, func() string {
			return fmt.Sprintf("%s (partition %d): history %+v, want it to end confirmed", dev, devicePartition(dev, 3), h)
		}, func() bool {
			h, err = p.DeviceHistory(ctx, dev, 100)
			if err != nil {
				t.Fatal(err)
			}
			return len(h) > 0 && h[len(h)-1].State == DevState(schemas.StateConfirmed)
		})
	}
}

// The partition count is fixed for a namespace: a publisher with another
// count than the one recorded refuses to start, and one from before
// partitioning (a per-device state bucket with records, no recorded
// layout) counts as one partition.
func TestPartitionLayoutFixed(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	newWith := func(ns string, parts int) error {
		cfg := e.cfg
		cfg.Namespace, cfg.Partitions = ns, parts
		cfg.Transport = e.dial("pub-"+ns+fmt.Sprint(parts), true)
		ctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel) // New's watches end with ctx
		_, err := New(ctx, cfg)
		return err
	}
	if err := newWith("lay3", 3); err != nil {
		t.Fatal(err)
	}
	if err := newWith("lay3", 2); !errors.Is(err, ErrInvalid) {
		t.Errorf("2 partitions where 3 were set up: %v, want ErrInvalid", err)
	}
	if err := newWith("lay3", 3); err != nil {
		t.Errorf("the same count again: %v", err)
	}
	if err := newWith("lay3", MaxPartitions+1); !errors.Is(err, ErrInvalid) {
		t.Errorf("%d partitions: %v, want ErrInvalid", MaxPartitions+1, err)
	}

	// An installation from before partitioning: records in <ns>_campdev,
	// no layout.
	if err := newWith("old", 1); err != nil {
		t.Fatal(err)
	}
	lease, err := e.js.KeyValue(ctx, "old_lease")
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.Delete(ctx, layoutKey); err != nil {
		t.Fatal(err)
	}
	part0, err := e.js.KeyValue(ctx, "old_campdev")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := part0.Put(ctx, "c-1.dev-1", []byte(`{"campaign":"c-1","device":"dev-1"}`)); err != nil {
		t.Fatal(err)
	}
	if err := newWith("old", 3); !errors.Is(err, ErrInvalid) {
		t.Errorf("3 partitions over an unpartitioned installation: %v, want ErrInvalid", err)
	}
	if err := newWith("old", 1); err != nil {
		t.Errorf("the unpartitioned installation with the default: %v", err)
	}
}

// With three instances and three partitions each instance owns one
// partition, and its index holds the devices of that partition only,
// while every instance's status shows the whole campaign (the sum of the
// partitions' count records) and lists every device.
func TestPartitionOwnedIndex(t *testing.T) {
	e := newEnv(t)
	var ps []*Publisher
	var stops []func()
	for _, name := range []string{"a", "b", "c"} {
		p, stop := e.start(func(c *Config) { c.Partitions, c.Instance = 3, name })
		ps, stops = append(ps, p), append(stops, stop)
	}
	ctx := context.Background()
	held := func(p *Publisher) []int {
		var out []int
		for i := range 3 {
			if p.idx.holdsPart(i) {
				out = append(out, i)
			}
		}
		return out
	}
	waitFor(t, 10*time.Second, func() string {
		return fmt.Sprintf("partitions held: %v %v %v, want one each", held(ps[0]), held(ps[1]), held(ps[2]))
	}, func() bool {
		seen := map[int]bool{}
		for _, p := range ps {
			h := held(p)
			if len(h) != 1 || seen[h[0]] {
				return false
			}
			seen[h[0]] = true
		}
		return true
	})
	const n = 12
	img := setupFleet(t, e, ps[0], n)
	f := newFleet(e)
	for i := range n {
		f.add(devName(i), false, false)
	}
	c, err := ps[1].CreateCampaign(ctx, e.who(ps[1]), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Phases: []uint8{50, 100}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		waitFor(t, 30*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
			s := statusOf_(t, p, c.ID)
			return s.State == CampaignCompleted && s.Counts["confirmed"] == n
		})
	}
	total := 0
	for k, p := range ps {
		h := held(p)
		devs := p.idx.devs(c.ID)
		total += len(devs)
		for _, d := range devs {
			if part := devicePartition(d.st.Device, 3); part != h[0] {
				t.Errorf("instance %d (partition %d) holds %s of partition %d", k, h[0], d.st.Device, part)
			}
		}
		page, err := p.CampaignDevices(ctx, c.ID, DeviceFilter{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Devices) != n {
			t.Errorf("instance %d lists %d devices, want %d", k, len(page.Devices), n)
		}
	}
	if total != n {
		t.Errorf("the instances' indexes hold %d devices together, want %d", total, n)
	}
	// An instance that stops gives its partition up; the others take it
	// over, with its devices.
	stops[2]()
	waitFor(t, 10*time.Second, func() string {
		var l lease
		_, err := getJSON(ctx, ps[0].st.lease, "lease", partKey(2), &l)
		return fmt.Sprintf("partitions held: %v %v after c stopped, want all three between a and b (lease of 2: %+v %v; now %v)", held(ps[0]), held(ps[1]), l, err, e.clock.Now())
	}, func() bool {
		h := append(held(ps[0]), held(ps[1])...)
		slices.Sort(h)
		return slices.Equal(h, []int{0, 1, 2})
	})
	waitFor(t, 10*time.Second, func() string { return "a and b do not hold every device" }, func() bool {
		return len(ps[0].idx.devs(c.ID))+len(ps[1].idx.devs(c.ID)) == n
	})
}

// The campaign scenarios of one bucket hold with the per-device state in
// three partitions, where the partitions' owners do the per-device work
// and the leader judges their count records.
func TestPartitionedScenarios(t *testing.T) {
	for _, sc := range []struct {
		name string
		run  func(*testing.T, *testEnv)
	}{
		{"phases", scenarioPhases}, {"abort", scenarioAbort}, {"restart", scenarioRestart},
		{"late-join", scenarioLateJoin}, {"two-instances", scenarioTwoInstances},
		{"timeouts", scenarioNoProgressTimeoutAndDeadline}, {"pause", scenarioPauseClearsNoticesResumeRestores},
		{"reconcile", scenarioReconcileResendsNotice},
	} {
		t.Run(sc.name, func(t *testing.T) {
			e := newEnv(t)
			e.cfg.Partitions = 3
			sc.run(t, e)
		})
	}
}
