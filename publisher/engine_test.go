package publisher

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/firmcast/firmcast/schemas"
)

func TestPhaseEnds(t *testing.T) {
	for _, c := range []struct {
		n      int
		phases []uint8
		want   []int
	}{
		{50, []uint8{10, 50, 100}, []int{5, 25, 50}},
		{50, []uint8{1, 10, 100}, []int{3, 6, 50}}, // at least 3 devices per phase
		{2, []uint8{1, 10, 100}, []int{2, 2, 2}},
		{1000, []uint8{1, 10, 100}, []int{10, 100, 1000}},
		{7, []uint8{100}, []int{7}},
		{10, []uint8{50, 60, 100}, []int{5, 8, 10}},
	} {
		if got := phaseEnds(c.n, c.phases, 3); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("phaseEnds(%d, %v) = %v, want %v", c.n, c.phases, got, c.want)
		}
	}
	for _, bad := range [][]uint8{nil, {50}, {10, 10, 100}, {50, 20, 100}, {0, 100}, {101}} {
		if checkPhases(bad) == nil {
			t.Errorf("phases %v accepted", bad)
		}
	}
}

func TestJudge(t *testing.T) {
	const (
		notified    = schemas.StateNotified
		verified    = schemas.StateManifestVerified
		downloading = schemas.StateDownloading
		staged      = schemas.StateStaged
		trial       = schemas.StateTrial
		confirmed   = schemas.StateConfirmed
		failed      = schemas.StateFailed
		rolled      = schemas.StateRolledBack
		deferred    = schemas.StateDeferred
		skipped     = schemas.StateSkipped
		idle        = schemas.StateIdle
	)
	for _, c := range []struct {
		cur  DevState
		next schemas.State
		want reportResult
	}{
		{StateQueued, downloading, "not-notified"},
		{DevState(notified), downloading, resApplied},
		{DevState(notified), confirmed, resApplied},
		{DevState(downloading), downloading, resApplied},
		{DevState(downloading), verified, "impossible"},
		{DevState(staged), downloading, "impossible"},
		{DevState(downloading), failed, resApplied},
		{DevState(trial), rolled, resApplied},
		{DevState(failed), rolled, resApplied},
		{DevState(confirmed), rolled, "impossible"},
		{DevState(confirmed), downloading, "impossible"},
		{DevState(confirmed), failed, "impossible"},
		{DevState(confirmed), confirmed, "repeated"},
		{DevState(skipped), failed, "impossible"},
		{DevState(failed), confirmed, "impossible"},
		{DevState(rolled), failed, "impossible"},
		{DevState(downloading), deferred, resApplied},
		{DevState(staged), deferred, "impossible"},
		{DevState(deferred), downloading, resApplied},
		// A timed-out device moves only on its outcome (changed on
		// purpose: a progress report used to move it back).
		{StateTimedOut, downloading, "final"},
		{StateTimedOut, deferred, "final"},
		{StateTimedOut, confirmed, resApplied},
		{StateTimedOut, failed, resApplied},
		{DevState(notified), idle, "impossible"},
	} {
		if got := judge(c.cur, c.next); got != c.want {
			t.Errorf("judge(%s -> %s) = %q, want %q", c.cur, c.next, got, c.want)
		}
	}
}

// Reports from non-targets, with impossible transitions or stale counters
// are counted and ignored.
func TestReportsIgnored(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	img := setupFleet(t, e, p, 10)
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Devices: []string{devName(0), devName(1)}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string { return "notify" }, func() bool { return statusOf_(t, p, c.ID).Counts["pending"] == 2 })
	now := e.clock.Now()
	rep := func(dev string, st schemas.State, counter uint64) reportResult {
		r := &schemas.DeviceReport{V: 1, Device: dev, Campaign: c.ID, State: st, Counter: counter, ActiveVersion: 1}
		res, err := p.applyReport(ctx, r, now)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for _, x := range []struct {
		dev     string
		st      schemas.State
		counter uint64
		want    reportResult
	}{
		{devName(5), schemas.StateDownloading, 1, "not-target"},
		{devName(0), schemas.StateDownloading, 5, "applied"},
		{devName(0), schemas.StateStaged, 5, "stale"},
		{devName(0), schemas.StateNotified, 6, "impossible"},
		{devName(0), schemas.StateConfirmed, 7, "applied"},
		{devName(0), schemas.StateDownloading, 8, "impossible"},
	} {
		if got := rep(x.dev, x.st, x.counter); got != x.want {
			t.Errorf("%s %s #%d: %s, want %s", x.dev, x.st, x.counter, got, x.want)
		}
	}
	s := statusOf_(t, p, c.ID)
	if s.Ignored != 4 || s.Counts["confirmed"] != 1 {
		t.Errorf("status %+v, want 4 ignored and 1 confirmed", s)
	}
}

func TestNoProgressTimeoutAndDeadline(t *testing.T) {
	scenarioNoProgressTimeoutAndDeadline(t, newEnv(t))
}

func scenarioNoProgressTimeoutAndDeadline(t *testing.T, e *testEnv) {
	p, _ := e.start(func(c *Config) { c.NoProgress = time.Minute; c.DefaultFailPermille = 1000 })
	ctx := context.Background()
	img := setupFleet(t, e, p, 4)
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{
		Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Start: true, Deadline: e.clock.Now().Add(time.Hour).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string { return "notify" }, func() bool { return statusOf_(t, p, c.ID).Counts["pending"] == 4 })
	e.clock.Advance(2 * time.Minute)
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		s := statusOf_(t, p, c.ID)
		return s.Counts["failed"] == 4 && s.Counts["failed.timeout"] == 4
	})
	// All timed out at a 100% failure threshold: aborted.
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignAborted
	})

	c2, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{
		Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Start: true, Deadline: e.clock.Now().Add(time.Hour).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Hour)
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c2.ID)) }, func() bool {
		return statusOf_(t, p, c2.ID).State == CampaignExpired
	})
	// The campaign shows expired before the leader has cleared its
	// notices (state first, then the effect): wait for the clearing.
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint("retained notices left: ", e.retainedNotices()) }, func() bool {
		return len(e.retainedNotices()) == 0
	})
}

func TestPauseClearsNoticesResumeRestores(t *testing.T) {
	scenarioPauseClearsNoticesResumeRestores(t, newEnv(t))
}

func scenarioPauseClearsNoticesResumeRestores(t *testing.T, e *testEnv) {
	p, _ := e.start(func(c *Config) { c.NoProgress = time.Minute })
	ctx := context.Background()
	img := setupFleet(t, e, p, 6)
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string { return "notify" }, func() bool { return len(e.retainedNotices()) == 6 })
	if _, err := p.PauseCampaign(ctx, e.who(p), c.ID); err != nil {
		t.Fatal(err)
	}
	if n := len(e.retainedNotices()); n != 0 {
		t.Fatalf("%d notices retained while paused", n)
	}
	// A long pause does not time devices out once resumed.
	e.clock.Advance(2 * time.Hour)
	if _, err := p.ResumeCampaign(ctx, e.who(p), c.ID); err != nil {
		t.Fatal(err)
	}
	if n := len(e.retainedNotices()); n != 6 {
		t.Fatalf("%d notices retained after resume, want 6", n)
	}
	awaitTicks(t, p, 2)
	if s := statusOf_(t, p, c.ID); s.Counts["failed"] != 0 || s.State != CampaignRunning {
		t.Fatalf("after a 2h pause (no-progress 1m): %+v", s)
	}
}

// Two instances against one NATS: one notice per device, every report
// applied once, the campaign completes.
func TestTwoInstancesNoDoubleWork(t *testing.T) { scenarioTwoInstances(t, newEnv(t)) }

func scenarioTwoInstances(t *testing.T, e *testEnv) {
	pa, _ := e.start(func(c *Config) { c.Instance = "a" })
	pb, _ := e.start(func(c *Config) { c.Instance = "b" })
	ctx := context.Background()
	img := setupFleet(t, e, pa, 50)
	f := newFleet(e)
	for i := range 50 {
		f.add(devName(i), false, false)
	}
	c, err := pb.CreateCampaign(ctx, e.who(pb), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Phases: []uint8{10, 50, 100}, SuccessPermille: 1000, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprint(statusOf_(t, pa, c.ID)) }, func() bool {
		return statusOf_(t, pa, c.ID).State == CampaignCompleted && statusOf_(t, pb, c.ID).State == CampaignCompleted
	})
	notices := counterValue(pa.met.notices) + counterValue(pb.met.notices)
	if notices != 50 {
		t.Errorf("%v notices published by the two instances, want 50", notices)
	}
	for i := range 50 {
		if r := f.get(devName(i)); r.notices != 1 {
			t.Errorf("%s got %d notices", r.id, r.notices)
		}
	}
	sum := func(res string) float64 {
		return counterValue(pa.met.reports.WithLabelValues(res)) + counterValue(pb.met.reports.WithLabelValues(res))
	}
	// A device's reports may be taken by either instance, so a later one
	// can be applied before an earlier one, which is then stale.
	// Reports still in flight when the campaign completed are taken later.
	results := func() string {
		var b strings.Builder
		for _, res := range []string{"applied", "stale", "superseded", "not-notified", "impossible", "not-target", "campaign-ended", "error", "malformed", "wrong-topic"} {
			fmt.Fprintf(&b, "%s=%v ", res, sum(res))
		}
		return b.String()
	}
	waitFor(t, 10*time.Second, func() string { return "all reports taken: " + results() }, func() bool {
		return sum("applied")+sum("stale")+sum("superseded")+sum("campaign-ended") >= 150
	})
	// A report overtaken by a later one of the same device is stale,
	// superseded, or (when it arrives after the campaign completed)
	// campaign-ended; none is lost or misjudged.
	if applied, late := sum("applied"), sum("stale")+sum("superseded")+sum("campaign-ended"); applied+late != 150 || applied < 50 {
		t.Errorf("%v reports applied, %v overtaken: want 150 in all (3 per device): %s", applied, late, results())
	}
	for _, res := range []string{"not-notified", "impossible", "not-target", "error"} {
		if n := sum(res); n != 0 {
			t.Errorf("%v reports taken as %s", n, res)
		}
	}
	if a, b := counterValue(pa.met.reports.WithLabelValues("applied")), counterValue(pb.met.reports.WithLabelValues("applied")); a == 0 || b == 0 {
		t.Errorf("reports not shared: a applied %v, b %v", a, b)
	}
	if s := statusOf_(t, pa, c.ID); s.Counts["confirmed"] != 50 {
		t.Errorf("instance a sees %v", s.Counts)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// At most MaxDownloading devices hold a notice at once; the next ones are
// notified as earlier ones finish. Notices carry the start window.
func TestPacingCapsDownloaders(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.MaxDownloading = 5; c.StartWindow = 90 * time.Second })
	ctx := context.Background()
	img := setupFleet(t, e, p, 20)
	f := newFleet(e)
	for i := range 20 {
		f.add(devName(i), false, true) // all hold after "downloading"
	}
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).Counts["downloading"] == 5
	})
	// Several ticks later still only five.
	sent := counterValue(p.met.notices)
	awaitTicks(t, p, 3)
	if s := statusOf_(t, p, c.ID); s.Counts["downloading"] != 5 || s.Counts["queued"] != 15 || counterValue(p.met.notices) != sent {
		t.Fatalf("with a cap of 5: %v", s.Counts)
	}
	b, _ := p.notice(ctx, &c, devName(0))
	var n schemas.UpdateNotice
	if err := schemas.Decode(b, &n); err != nil || n.StartWindowMS != 90000 {
		t.Errorf("notice start window %d ms, %v; want 90000", n.StartWindowMS, err)
	}
	f.release()
	waitFor(t, 20*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignCompleted
	})
	if got := counterValue(p.met.notices); got != 20 {
		t.Errorf("%v notices, want 20", got)
	}
}

// A clean stop releases the leader lease: another instance leads at once,
// without waiting for LeaseTTL; an unreleased lease blocks it until then.
func TestLeaseReleaseAndExpiry(t *testing.T) {
	e := newEnv(t)
	pa, stopA := e.start(func(c *Config) { c.Instance = "a" })
	pb := e.open(func(c *Config) { c.Instance = "b" })
	ctx := context.Background()
	waitFor(t, 5*time.Second, func() string { return "a leads" }, func() bool {
		var l lease
		_, err := getJSON(ctx, pa.st.lease, "lease", leaseKey, &l)
		return err == nil && l.Holder == "a"
	})
	if ok, _ := pb.acquireLease(ctx); ok {
		t.Fatal("b took a live lease")
	}
	stopA()
	if ok, fresh := pb.acquireLease(ctx); !ok || !fresh {
		t.Fatalf("b after a's clean stop: leader=%v fresh=%v", ok, fresh)
	}
	// b now holds it; a third instance must wait for expiry.
	pc := e.open(func(c *Config) { c.Instance = "c" })
	if ok, _ := pc.acquireLease(ctx); ok {
		t.Fatal("c took b's live lease")
	}
	e.clock.Advance(11 * time.Second)
	if ok, _ := pc.acquireLease(ctx); !ok {
		t.Fatal("c could not take b's expired lease")
	}
}

// lateRenewal is the lease bucket with a renewal of the holder's landing
// between releaseLease's read and its conditional delete: the last
// tick's, sent before Run stopped, stored after the read.
type lateRenewal struct {
	jetstream.KeyValue
	once sync.Once
}

func (l *lateRenewal) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	l.once.Do(func() {
		if e, err := l.KeyValue.Get(ctx, key); err == nil {
			_, _ = l.KeyValue.Put(ctx, key, e.Value())
		}
	})
	return l.KeyValue.Delete(ctx, key, opts...)
}

// TestLeaseReleaseAfterLateRenewal: a clean stop releases the lease even
// when a renewal lands between the release's read and its delete (seen
// as TestLeaseReleaseAndExpiry failing under load: the conditional
// delete failed and the lease was left to expire).
func TestLeaseReleaseAfterLateRenewal(t *testing.T) {
	e := newEnv(t)
	pa := e.open(func(c *Config) { c.Instance = "a" })
	pb := e.open(func(c *Config) { c.Instance = "b" })
	ctx := context.Background()
	if ok, _ := pa.acquireLease(ctx); !ok {
		t.Fatal("a did not take the free lease")
	}
	pa.st.lease = &lateRenewal{KeyValue: pa.st.lease}
	pa.releaseLease(ctx)
	if ok, fresh := pb.acquireLease(ctx); !ok || !fresh {
		t.Fatalf("b after a's release: leader=%v fresh=%v", ok, fresh)
	}
}

// TestOpenDevsConcurrently: a step opens its campaign's device records
// several at a time (each a create in the KV, a round trip to its
// stream), every one once, and a second pass opens none again. One after
// another they held a 500-device campaign's first notice back by 3.4 s.
func TestOpenDevsConcurrently(t *testing.T) {
	e := newEnv(t)
	p := e.open(nil)
	ctx := context.Background()
	kvs := p.st.campdev.kvs
	slow := make([]*slowCreates, len(kvs))
	for i, kv := range kvs {
		slow[i] = &slowCreates{KeyValue: kv, delay: 20 * time.Millisecond}
		p.st.campdev.kvs[i] = slow[i]
	}
	c := Campaign{ID: "c-open"}
	for i := range 3 * openWorkers {
		c.Targets = append(c.Targets, devName(i))
	}
	now := e.clock.Now()
	if err := p.openDevs(ctx, &c, len(c.Targets), now, func(i int) bool { return i%3 != 2 }); err != nil {
		t.Fatal(err)
	}
	creates, peak := 0, 0
	for _, s := range slow {
		creates += int(s.creates.Load())
		peak = max(peak, int(s.peak.Load()))
	}
	if want := 2 * openWorkers; creates != want {
		t.Errorf("%d records created, want %d (the targets accepted)", creates, want)
	}
	if peak < 2 || peak > openWorkers {
		t.Errorf("at most %d creates at once, want 2 to %d", peak, openWorkers)
	}
	for i, dev := range c.Targets {
		st, _, ok := p.idx.dev(c.ID, dev)
		if want := i%3 != 2; ok != want || (ok && st.State != StateQueued) {
			t.Errorf("%s: indexed %v (%s), want %v", dev, ok, st.State, want)
		}
	}
	if err := p.openDevs(ctx, &c, len(c.Targets), now, func(i int) bool { return i%3 != 2 }); err != nil {
		t.Fatal(err)
	}
	again := 0
	for _, s := range slow {
		again += int(s.creates.Load())
	}
	if again != creates {
		t.Errorf("a second pass created %d records more, want none", again-creates)
	}
}

// slowCreates answers each Create after delay (a KV under load) and
// counts creates and the most in flight at once.
type slowCreates struct {
	jetstream.KeyValue
	delay                   time.Duration
	creates, inflight, peak atomic.Int64
}

func (s *slowCreates) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	s.creates.Add(1)
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return s.KeyValue.Create(ctx, key, value, opts...)
}
