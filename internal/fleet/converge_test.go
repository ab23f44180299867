package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// stateRank orders the states of a device's way through a campaign; a
// device's stored state must never go to a lower rank (deferred, which a
// device may leave back to an earlier step, and the publisher's own
// states are ranked apart).
func stateRank(s publisher.DevState) int {
	switch s {
	case publisher.StateQueued:
		return 0
	case publisher.DevState(schemas.StateNotified):
		return 1
	case publisher.DevState(schemas.StateManifestVerified):
		return 2
	case publisher.DevState(schemas.StateDownloading):
		return 3
	case publisher.DevState(schemas.StateCandidateVerified):
		return 4
	case publisher.DevState(schemas.StateStaged):
		return 5
	case publisher.DevState(schemas.StateRebooting):
		return 6
	case publisher.DevState(schemas.StateTrial):
		return 7
	case publisher.DevState(schemas.StateConfirmed), publisher.DevState(schemas.StateFailed),
		publisher.DevState(schemas.StateRolledBack), publisher.DevState(schemas.StateSkipped):
		return 8
	}
	return -1 // deferred, timed out
}

// backwards says why the stored state of one device moving from prev to
// next is a step back ("" when it is not): its report counter went down;
// or, with the same counter, it changed other than by the publisher's own
// steps (queued to notified, to timed out); or an outcome was replaced
// (except failed by rolled back, and timed out by the device's outcome);
// or it went down the ranks.
func backwards(prev, next publisher.DeviceState) string {
	pr, nr := stateRank(prev.State), stateRank(next.State)
	out := func(s publisher.DevState) bool { return stateRank(s) == 8 }
	switch {
	case next.Counter < prev.Counter:
		return fmt.Sprintf("counter %d after %d", next.Counter, prev.Counter)
	case next.State == prev.State:
		return ""
	case next.Counter == prev.Counter && !(prev.State == publisher.StateQueued && nr == 1) && next.State != publisher.StateTimedOut:
		return fmt.Sprintf("%s after %s at the same counter %d", next.State, prev.State, next.Counter)
	case out(prev.State) && !(prev.State == publisher.DevState(schemas.StateFailed) && next.State == publisher.DevState(schemas.StateRolledBack)):
		return fmt.Sprintf("outcome %s replaced by %s", prev.State, next.State)
	case prev.State == publisher.StateTimedOut && !out(next.State):
		return fmt.Sprintf("timed out, then %s", next.State)
	case pr >= 0 && nr >= 0 && nr < pr:
		return fmt.Sprintf("%s after %s", next.State, prev.State)
	}
	return ""
}

func TestBackwards(t *testing.T) {
	st := func(s publisher.DevState, c uint64) publisher.DeviceState {
		return publisher.DeviceState{State: s, Counter: c}
	}
	d := func(s schemas.State) publisher.DevState { return publisher.DevState(s) }
	for _, tc := range []struct {
		prev, next publisher.DeviceState
		back       bool
	}{
		{st(publisher.StateQueued, 0), st(d(schemas.StateNotified), 0), false},
		{st(d(schemas.StateNotified), 0), st(d(schemas.StateDownloading), 3), false},
		{st(d(schemas.StateDownloading), 3), st(d(schemas.StateDownloading), 4), false},
		{st(d(schemas.StateDownloading), 4), st(d(schemas.StateDownloading), 3), true},
		{st(d(schemas.StateStaged), 5), st(d(schemas.StateDownloading), 6), true},
		{st(d(schemas.StateDownloading), 5), st(d(schemas.StateDeferred), 6), false},
		{st(d(schemas.StateDeferred), 6), st(d(schemas.StateDownloading), 7), false},
		{st(d(schemas.StateConfirmed), 9), st(d(schemas.StateFailed), 10), true},
		{st(d(schemas.StateFailed), 9), st(d(schemas.StateRolledBack), 10), false},
		{st(d(schemas.StateDownloading), 5), st(publisher.StateTimedOut, 5), false},
		{st(publisher.StateTimedOut, 5), st(d(schemas.StateConfirmed), 9), false},
		{st(publisher.StateTimedOut, 5), st(d(schemas.StateDownloading), 9), true},
		{st(d(schemas.StateDownloading), 5), st(d(schemas.StateNotified), 5), true},
	} {
		if got := backwards(tc.prev, tc.next) != ""; got != tc.back {
			t.Errorf("%s/%d -> %s/%d: backwards %v, want %v", tc.prev.State, tc.prev.Counter, tc.next.State, tc.next.Counter, got, tc.back)
		}
	}
}

// TestInstanceKilledMidCampaignConverges runs a campaign of 30 real agents
// (mosquitto) with three publisher instances sharing the reports, on a
// three-node JetStream cluster (R3). Mid-campaign the instance holding
// the leader lease is killed (a crash: reports in its workers' queues are
// lost, its lease expires). Every device still ends confirmed, in the
// stored state too, through the survivors' re-notice (Config.Reconcile)
// and the devices' re-report; and a watch of the per-device state bucket
// from the start sees no device's state ever move backwards. It runs
// with the per-device state in one bucket and partitioned in three.
func TestInstanceKilledMidCampaignConverges(t *testing.T) {
	for _, parts := range []int{1, 3} {
		t.Run(fmt.Sprintf("partitions=%d", parts), func(t *testing.T) { testInstanceKilledConverges(t, parts) })
	}
}

func testInstanceKilledConverges(t *testing.T, parts int) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	log := testLogger(t)
	_, urls := startNATSCluster(t)
	waitJetStream(t, urls)
	mq := testutil.StartMosquitto(t, "")
	topics := testutil.UniqueTopics(t)
	const ns = "fcv"

	key, _ := suit.GenerateKey("es256", nil)
	signer, _ := suit.NewKeySigner(key, 0)
	vendor, class := uuidFor("vendor"), uuidFor("class")
	const adminKey = "fk-converge-test-admin-0123456789"
	var pubs []*stack.Instance
	for i := range 3 {
		order := append([]string{urls[i]}, append(append([]string{}, urls[:i]...), urls[i+1:]...)...)
		pubs = append(pubs, stacktest.StartInstance(t, stack.InstanceConfig{
			NATSURL: strings.Join(order, ","), InOrder: true, ReconnectMax: 100 * time.Millisecond,
			DeviceURLs: []string{mq.URL()}, ClientID: fmt.Sprintf("cv-pub%d-%s", i, randomHex(3)), Topics: topics, Logger: log,
			Publisher: publisher.Config{
				Namespace: ns, Replicas: 3, Partitions: parts,
				Signer: publisher.SUITSigner(signer), VendorID: vendor, ClassID: class, ChunkSize: 4096,
				TickInterval: 50 * time.Millisecond, LeaseTTL: 2 * time.Second, StartWindow: -1,
				RepairWindow: 50 * time.Millisecond, WaveInterval: time.Second, BootstrapKey: adminKey, Logger: log,
				Reconcile: 2 * time.Second,
			},
		}))
	}
	who := pubs[0].Admin

	// The watch of every per-device state, from the first write on.
	nc, err := nats.Connect(strings.Join(urls, ","), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var mu sync.Mutex
	last := map[string]publisher.DeviceState{}
	var back []string
	var watching sync.WaitGroup
	kvs := map[int]jetstream.KeyValue{}
	var ws []jetstream.KeyWatcher
	for i := range parts {
		bucket := ns + "_campdev" // publisher/partition.go's names
		if i > 0 {
			bucket += fmt.Sprintf("_p%d", i)
		}
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		kvs[i] = kv
		w, err := kv.WatchAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		ws = append(ws, w)
		watching.Add(1)
		go func() {
			defer watching.Done()
			watchStates(t, w, &mu, last, &back)
		}()
	}

	const n, size = 30, 128 << 10
	v1, v2 := Image(12, "v1", size), Image(12, "v2", size)
	fl, err := NewFleet(ctx, FleetConfig{
		Devices: n, Prefix: "cv" + randomHex(3), Class: "converge", Dir: t.TempDir(), MQTTURL: mq.URL(), Topics: topics,
		VendorID: vendor, ClassID: class, Trust: suit.TrustAnchors{key.Public()}, Factory: v1, Logger: log,
		Register: func(ctx context.Context, id, secret string) error {
			_, _, err := pubs[0].Pub.AddDevice(ctx, who, publisher.NewDevice{ID: id, Class: "converge", Secret: secret})
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	defer fl.Stop()
	if err := fl.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pubs[0].Pub.UploadImage(ctx, who, "v2.bin", bytes.NewReader(v2)); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(v2)
	c, err := pubs[0].Pub.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: digest[:], Class: "converge", Phases: []uint8{30, 100}, Start: true})
	if err != nil {
		t.Fatal(err)
	}

	// Mid-campaign (the second phase open, devices downloading, reports
	// flowing), crash the lease holder.
	killed := -1
	for killed < 0 {
		st, err := pubs[1].Pub.CampaignStatus(ctx, c.ID)
		if err == nil && st.Phase >= 1 && st.Counts["downloading"] >= 3 {
			var l struct{ Holder string }
			lkv, err := js.KeyValue(ctx, ns+"_lease")
			if err != nil {
				t.Fatal(err)
			}
			e, err := lkv.Get(ctx, "leader")
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(e.Value(), &l); err != nil {
				t.Fatal(err)
			}
			for i, p := range pubs {
				if p.ClientID == l.Holder {
					killed = i
				}
			}
			if killed < 0 {
				t.Fatalf("lease held by %q, none of the instances", l.Holder)
			}
			pubs[killed].Crash()
			t.Logf("crashed instance %d (the lease holder) in phase %d at %v", killed, st.Phase, st.Counts)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("campaign never had devices downloading: %+v, %v", st, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	survivor := pubs[(killed+1)%3].Pub
	var st publisher.Status
	for {
		st, err = survivor.CampaignStatus(ctx, c.ID)
		if err == nil && st.State != publisher.CampaignRunning {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("campaign did not end after the crash: %+v (%v)", st, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if st.State != publisher.CampaignCompleted {
		t.Fatalf("campaign ended %s (%s): %v", st.State, st.Reason, st.Counts)
	}
	fl.Stop()
	var sum Summary
	sum.fill(fl, fl.FactoryDigest(), digest)
	if sum.ConfirmedV2 != n {
		t.Errorf("%d of %d devices confirmed on v2: %+v", sum.ConfirmedV2, n, sum.Problems)
	}
	// Every stored state converged: the watch has each device confirmed
	// (it follows every write up to the last one read back here).
	for _, id := range c.Targets {
		var want publisher.DeviceState
		h := fnv.New32a() // the device's partition (publisher/partition.go)
		h.Write([]byte(id))
		e, err := kvs[int(h.Sum32()%uint32(parts))].Get(ctx, c.ID+"."+id)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(e.Value(), &want); err != nil {
			t.Fatal(err)
		}
		if want.State != publisher.DevState(schemas.StateConfirmed) {
			t.Errorf("%s: stored state %s, want confirmed", id, want.State)
		}
	}
	for _, w := range ws {
		w.Stop()
	}
	watching.Wait()
	mu.Lock()
	defer mu.Unlock()
	for _, b := range back {
		t.Errorf("state moved backwards: %s", b)
	}
	seen := 0
	for k := range last {
		if strings.HasPrefix(k, c.ID+".") {
			seen++
		}
	}
	if seen != n {
		t.Errorf("the watch saw %d devices, want %d", seen, n)
	}
}

// watchStates follows one per-device state bucket until w stops, keeping
// each key's last state in last and every step back in back.
func watchStates(t *testing.T, w jetstream.KeyWatcher, mu *sync.Mutex, last map[string]publisher.DeviceState, back *[]string) {
	for e := range w.Updates() {
		if e == nil || e.Operation() != jetstream.KeyValuePut {
			continue
		}
		var st publisher.DeviceState
		if err := json.Unmarshal(e.Value(), &st); err != nil {
			t.Errorf("%s: %v", e.Key(), err)
			continue
		}
		mu.Lock()
		if prev, ok := last[e.Key()]; ok {
			if why := backwards(prev, st); why != "" {
				*back = append(*back, fmt.Sprintf("%s (revision %d): %s", e.Key(), e.Revision(), why))
			}
		}
		last[e.Key()] = st
		mu.Unlock()
	}
}
