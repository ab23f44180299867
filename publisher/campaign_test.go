package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// setupFleet registers n devices, uploads an image and returns its digest.
func setupFleet(t *testing.T, e *testEnv, p *Publisher, n int) []byte {
	t.Helper()
	ctx := context.Background()
	who := e.who(p)
	for i := range n {
		if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: devName(i), Class: "sensor", Groups: []string{"all"}}); err != nil {
			t.Fatalf("AddDevice: %v", err)
		}
	}
	img, _, err := p.UploadImage(ctx, who, "fw-2", bytes.NewReader(randomImage(t, 5000)))
	if err != nil {
		t.Fatalf("UploadImage: %v", err)
	}
	d, _ := hex.DecodeString(img.Digest)
	return d
}

var (
	testKeyOnce sync.Once
	testSigner  suit.Signer
)

// testEnvelope returns a signed SUIT envelope for the image with digest d.
func testEnvelope(t testing.TB, d []byte) []byte {
	t.Helper()
	testKeyOnce.Do(func() {
		k, err := suit.GenerateKey("es256", nil)
		if err != nil {
			panic(err)
		}
		if testSigner, err = suit.NewKeySigner(k, suit.ES256); err != nil {
			panic(err)
		}
	})
	env, err := suit.Create(context.Background(), suit.CreateOptions{
		ImageDigest: d, ImageSize: 5000, VendorID: make([]byte, 16), ClassID: make([]byte, 16), Seq: 2,
		ChunkTableDigest: make([]byte, 32),
	}, testSigner)
	if err != nil {
		t.Fatalf("envelope: %v", err)
	}
	return env
}

func statusOf_(t testing.TB, p *Publisher, id string) Status {
	s, err := p.CampaignStatus(context.Background(), id)
	if err != nil {
		panic(fmt.Sprintf("status: %v", err))
	}
	return s
}

func TestCampaignAdvancesThroughPhases(t *testing.T) { scenarioPhases(t, newEnv(t)) }

func scenarioPhases(t *testing.T, e *testEnv) {
	p, _ := e.start(nil)
	ctx := context.Background()
	img := setupFleet(t, e, p, 50)
	f := newFleet(e)
	for i := range 50 {
		f.add(devName(i), false, false)
	}
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{
		Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Phases: []uint8{10, 50, 100},
		SuccessPermille: 1000, FailPermille: 200, Start: true,
	})
	if err != nil {
		t.Fatalf("CreateCampaign: %v", err)
	}
	if got, want := c.PhaseEnds, []int{5, 25, 50}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("phase ends %v, want %v", got, want)
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprintf("%+v", statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignCompleted
	})
	s := statusOf_(t, p, c.ID)
	if s.Counts["confirmed"] != 50 || s.Phase != 2 {
		t.Fatalf("completed with %v at phase %d, want 50 confirmed at phase 2", s.Counts, s.Phase)
	}
	// No device of a later phase was notified before every device of the
	// phases before it had confirmed (success threshold 100%).
	for k := 1; k < len(c.PhaseEnds); k++ {
		lo, hi := c.phaseRange(k)
		var lastConfirm int64
		for _, id := range c.Targets[:lo] {
			lastConfirm = max(lastConfirm, f.get(id).confirmed)
		}
		for _, id := range c.Targets[lo:hi] {
			if r := f.get(id); r.firstNotice < lastConfirm {
				t.Errorf("phase %d device %s notified (seq %d) before phase %d finished (seq %d)", k, id, r.firstNotice, k-1, lastConfirm)
			}
		}
	}
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint("retained notices left after completion: ", e.retainedNotices()) }, func() bool {
		return len(e.retainedNotices()) == 0 // the leader clears them after it wrote the end
	})
	// The registry takes a device's outcome just after its campaign
	// state (recordOutcome follows the state's write), so the campaign
	// may be seen complete a moment before the last device's record is.
	var d DeviceDetail
	waitFor(t, 5*time.Second, func() string {
		return fmt.Sprintf("device detail %+v, %v: want version 2 and one confirmed campaign", d, err)
	}, func() bool {
		d, err = p.DeviceDetail(ctx, devName(7))
		return err == nil && d.ActiveVersion == 2 && len(d.Campaigns) == 1 && d.Campaigns[0].State == DevState(schemas.StateConfirmed)
	})
	audit, err := p.Audit(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var phases int
	for _, a := range audit {
		if a.Action == "campaign.phase" && a.Target == c.ID {
			phases++
		}
	}
	if phases != 2 {
		t.Errorf("audit shows %d phase openings, want 2", phases)
	}
}

func TestCampaignAbortsAtFailureThreshold(t *testing.T) { scenarioAbort(t, newEnv(t)) }

func scenarioAbort(t *testing.T, e *testEnv) {
	p, _ := e.start(nil)
	ctx := context.Background()
	img := setupFleet(t, e, p, 50)
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{
		Image: img, Envelope: testEnvelope(t, img), Groups: []string{"all"}, Phases: []uint8{10, 50, 100},
		SuccessPermille: 1000, FailPermille: 200,
	})
	if err != nil {
		t.Fatalf("CreateCampaign: %v", err)
	}
	// A quarter of the fleet fails: every fourth device in rollout order,
	// so the first phase (5 devices) holds two of them.
	f := newFleet(e)
	failing := 0
	for i, id := range c.Targets {
		f.add(id, i%4 == 0, false)
		if i%4 == 0 {
			failing++
		}
	}
	if failing != 13 {
		t.Fatalf("%d failing devices, want 13", failing)
	}
	if _, err := p.StartCampaign(ctx, e.who(p), c.ID); err != nil {
		t.Fatalf("start: %v", err)
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprintf("%+v", statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignAborted
	})
	s := statusOf_(t, p, c.ID)
	if !strings.Contains(s.Reason, "failure threshold") || s.Phase != 0 || s.Counts["failed"] == 0 {
		t.Fatalf("aborted with %+v, want failure threshold in phase 0", s)
	}
	for _, id := range c.Targets[c.PhaseEnds[0]:] {
		if r := f.get(id); r.notices != 0 {
			t.Errorf("device %s outside the first phase got %d notices", id, r.notices)
		}
	}
	waitFor(t, 5*time.Second, func() string { return fmt.Sprint("retained notices left after abort: ", e.retainedNotices()) }, func() bool {
		return len(e.retainedNotices()) == 0 // the leader clears them after it wrote the end
	})
	if _, err := p.ResumeCampaign(ctx, e.who(p), c.ID); err == nil {
		t.Error("resume of an aborted campaign succeeded")
	}
}

func TestCampaignSurvivesRestart(t *testing.T) { scenarioRestart(t, newEnv(t)) }

func scenarioRestart(t *testing.T, e *testEnv) {
	pa, stopA := e.start(func(c *Config) { c.Instance = "a" })
	ctx := context.Background()
	img := setupFleet(t, e, pa, 50)
	c, err := pa.CreateCampaign(ctx, e.who(pa), schemas.CampaignSpec{
		Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Phases: []uint8{10, 50, 100}, SuccessPermille: 1000,
	})
	if err != nil {
		t.Fatalf("CreateCampaign: %v", err)
	}
	// Phase 0 devices finish at once; the others hold after "downloading".
	f := newFleet(e)
	for i, id := range c.Targets {
		f.add(id, false, i >= c.PhaseEnds[0])
	}
	if _, err := pa.StartCampaign(ctx, e.who(pa), c.ID); err != nil {
		t.Fatal(err)
	}
	phase1 := c.PhaseEnds[1] - c.PhaseEnds[0]
	waitFor(t, 20*time.Second, func() string { return fmt.Sprintf("%+v", statusOf_(t, pa, c.ID)) }, func() bool {
		s := statusOf_(t, pa, c.ID)
		return s.Phase == 1 && s.Counts["downloading"] == uint64(phase1) && s.Counts["confirmed"] == 5
	})
	before := statusOf_(t, pa, c.ID)
	stopA()

	// Another instance takes over once A's lease has run out.
	e.clock.Advance(e.cfg.LeaseTTL + 11*time.Second)
	pb, _ := e.start(func(c *Config) { c.Instance = "b" })
	after := statusOf_(t, pb, c.ID)
	if fmt.Sprint(before.Counts) != fmt.Sprint(after.Counts) || before.Phase != after.Phase || after.State != CampaignRunning {
		t.Fatalf("after restart: %+v\nbefore: %+v", after, before)
	}
	f.release()
	waitFor(t, 20*time.Second, func() string { return fmt.Sprintf("%+v", statusOf_(t, pb, c.ID)) }, func() bool {
		return statusOf_(t, pb, c.ID).State == CampaignCompleted
	})
	if s := statusOf_(t, pb, c.ID); s.Counts["confirmed"] != 50 {
		t.Fatalf("completed with %v, want 50 confirmed", s.Counts)
	}
}

func TestCampaignLateJoiners(t *testing.T) { scenarioLateJoin(t, newEnv(t)) }

// scenarioLateJoin: devices that connect only after their notice was
// published get it (retained) when they subscribe, and finish.
func scenarioLateJoin(t *testing.T, e *testEnv) {
	p, _ := e.start(nil)
	ctx := context.Background()
	img := setupFleet(t, e, p, 10)
	f := newFleet(e)
	for i := range 5 {
		f.add(devName(i), false, false)
	}
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		s := statusOf_(t, p, c.ID)
		return s.Counts["confirmed"] == 5 && s.Counts["pending"] == 5
	})
	for i := 5; i < 10; i++ {
		f.add(devName(i), false, false)
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignCompleted
	})
	for i := 5; i < 10; i++ {
		if r := f.get(devName(i)); r.notices == 0 || r.confirmed == 0 {
			t.Errorf("late device %s: %d notices, confirmed %v", r.id, r.notices, r.confirmed != 0)
		}
	}
}

func TestExplicitPhaseLists(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	img := setupFleet(t, e, p, 6)
	f := newFleet(e)
	for i := range 6 {
		f.add(devName(i), false, false)
	}
	lists := [][]string{{devName(4)}, {devName(0), devName(2)}}
	c, err := p.CreatePhasedCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), SuccessPermille: 1000, Start: true}, lists)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("[%s %s %s] [1 3] [33 100]", devName(4), devName(0), devName(2)); fmt.Sprint(c.Targets, c.PhaseEnds, c.Phases) != want {
		t.Fatalf("targets %v ends %v phases %v", c.Targets, c.PhaseEnds, c.Phases)
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignCompleted
	})
	if f.get(devName(4)).confirmed > f.get(devName(0)).firstNotice {
		t.Error("phase 1 notified before phase 0 confirmed")
	}
	for _, i := range []int{1, 3, 5} {
		if n := f.get(devName(i)).notices; n != 0 {
			t.Errorf("%s is in no phase but got %d notices", devName(i), n)
		}
	}
	for _, bad := range [][][]string{{{}}, {{devName(0)}, {devName(0)}}, {{"nobody"}}} {
		if _, err := p.CreatePhasedCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img)}, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("lists %v: %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := p.CreatePhasedCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor"}, lists); !errors.Is(err, ErrInvalid) {
		t.Errorf("lists with a class: %v", err)
	}
}
