package publisher

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/schemas"
)

// errSlow is what a KV or stream request whose reply did not come in time
// returns.
var errSlow = fmt.Errorf("nats: %w", context.DeadlineExceeded)

// faultKV is a KV bucket whose next requests time out: slowGets Gets
// without asking, lostUpdates Updates without reaching the server,
// lateUpdates / lateCreates after the server applied them (the reply was
// lost). Safe for concurrent use.
type faultKV struct {
	jetstream.KeyValue
	mu                                              sync.Mutex
	slowGets, lostUpdates, lateUpdates, lateCreates int
	updates                                         int // Updates that reached the server
}

func (f *faultKV) take(n *int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if *n > 0 {
		*n--
		return true
	}
	return false
}

func (f *faultKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if f.take(&f.slowGets) {
		return nil, errSlow
	}
	return f.KeyValue.Get(ctx, key)
}

func (f *faultKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	if f.take(&f.lostUpdates) {
		return 0, errSlow
	}
	n, err := f.KeyValue.Update(ctx, key, value, rev)
	f.mu.Lock()
	f.updates++
	f.mu.Unlock()
	if err == nil && f.take(&f.lateUpdates) {
		return 0, errSlow
	}
	return n, err
}

func (f *faultKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	n, err := f.KeyValue.Create(ctx, key, value, opts...)
	if err == nil && f.take(&f.lateCreates) {
		return 0, errSlow
	}
	return n, err
}

// faultJS is a JetStream whose next publishes on subject time out: lost
// ones without reaching the server, late ones after the server stored
// them.
type faultJS struct {
	jetstream.JetStream
	mu         sync.Mutex
	subject    string
	lost, late int
}

func (f *faultJS) Publish(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	f.mu.Lock()
	lost, late := subj == f.subject && f.lost > 0, subj == f.subject && f.lost == 0 && f.late > 0
	if lost {
		f.lost--
	} else if late {
		f.late--
	}
	f.mu.Unlock()
	if lost {
		return nil, errSlow
	}
	ack, err := f.JetStream.Publish(ctx, subj, data, opts...)
	if err == nil && late {
		return nil, errSlow
	}
	return ack, err
}

// runOpened runs a publisher made by e.open until the test ends.
func runOpened(t *testing.T, p *Publisher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-p.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
}

// A KV read that times out once does not end anything: the status a
// caller polls (a bench, `campaign watch`) is read again within the
// operation's deadline, and the campaign runs to completion.
func TestKVReadTimeoutDoesNotEndCampaign(t *testing.T) {
	e := newEnv(t)
	p := e.open(nil)
	camps := &faultKV{KeyValue: p.st.campaigns}
	devs := &faultKV{KeyValue: p.st.campdev.kvs[0]}
	p.st.campaigns, p.st.campdev.kvs[0] = camps, devs
	runOpened(t, p)
	ctx := context.Background()
	img := setupFleet(t, e, p, 6)
	f := newFleet(e)
	for i := range 6 {
		f.add(devName(i), false, false)
	}
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Phases: []uint8{50, 100}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	camps.mu.Lock()
	camps.slowGets = 1
	camps.mu.Unlock()
	devs.mu.Lock()
	devs.slowGets = 1
	devs.mu.Unlock()
	if _, err := p.CampaignStatus(ctx, c.ID); err != nil {
		t.Fatalf("status with one slow KV read: %v", err)
	}
	// Every read of the campaign times out once more while it runs.
	for range 3 {
		camps.mu.Lock()
		camps.slowGets = 1
		camps.mu.Unlock()
		awaitTicks(t, p, 2)
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
		return statusOf_(t, p, c.ID).State == CampaignCompleted
	})
	if s := statusOf_(t, p, c.ID); s.Counts["confirmed"] != 6 {
		t.Errorf("completed with %+v, want 6 confirmed", s)
	}
}

// A compare-and-set write whose reply is lost after the server applied it
// is not applied again: the transition reports success once, its audit
// entry is written once; one that never reached the server is sent again.
func TestCASWriteTimeoutAppliedOnce(t *testing.T) {
	e := newEnv(t)
	p := e.open(nil)
	camps := &faultKV{KeyValue: p.st.campaigns}
	devs := &faultKV{KeyValue: p.st.devices}
	p.st.campaigns, p.st.devices = camps, devs
	runOpened(t, p)
	ctx := context.Background()
	who := e.who(p)
	img := setupFleet(t, e, p, 2)
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name string
		late bool
		op   func() (Campaign, error)
		want string
	}{
		{"pause, reply lost", true, func() (Campaign, error) { return p.PauseCampaign(ctx, who, c.ID) }, CampaignPaused},
		{"resume, request lost", false, func() (Campaign, error) { return p.ResumeCampaign(ctx, who, c.ID) }, CampaignRunning},
		{"pause again, reply lost", true, func() (Campaign, error) { return p.PauseCampaign(ctx, who, c.ID) }, CampaignPaused},
	} {
		camps.mu.Lock()
		if step.late {
			camps.lateUpdates = 1
		} else {
			camps.lostUpdates = 1
		}
		before := camps.updates
		camps.mu.Unlock()
		got, err := step.op()
		if err != nil || got.State != step.want {
			t.Fatalf("%s: %+v, %v; want %s", step.name, got.State, err, step.want)
		}
		camps.mu.Lock()
		n := camps.updates - before
		camps.mu.Unlock()
		if n != 1 {
			t.Errorf("%s: %d updates reached the server, want 1", step.name, n)
		}
	}
	entries, err := p.Audit(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, en := range entries {
		if en.Target == c.ID {
			count[en.Action]++
		}
	}
	if count["campaign.pause"] != 2 || count["campaign.resume"] != 1 {
		t.Errorf("audit entries %v, want 2 pauses and 1 resume", count)
	}
	// A create whose reply is lost is done, not "already exists".
	devs.mu.Lock()
	devs.lateCreates = 1
	devs.mu.Unlock()
	if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: "dev-late", Class: "c"}); err != nil {
		t.Errorf("a create whose reply was lost: %v", err)
	}
}

// An audit append that times out is sent again with the same
// Nats-Msg-Id: one lost on the way is recorded, one stored before its
// reply was lost is not recorded twice.
func TestAuditAppendRetriedOnce(t *testing.T) {
	e := newEnv(t)
	fj := &faultJS{JetStream: e.js}
	p, _ := e.start(func(c *Config) { c.JetStream = fj })
	fj.mu.Lock()
	fj.subject = p.st.auditSubj
	fj.mu.Unlock()
	ctx := context.Background()
	for _, c := range []struct {
		name       string
		lost, late int
	}{{"lost", 1, 0}, {"stored, reply lost", 0, 1}, {"lost then stored, reply lost", 1, 1}} {
		fj.mu.Lock()
		fj.lost, fj.late = c.lost, c.late
		fj.mu.Unlock()
		target := strings.ReplaceAll(c.name, " ", "-")
		p.audit(ctx, System, "test.retry", target, "")
		entries, err := p.Audit(ctx, 1000)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, en := range entries {
			if en.Target == target {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d audit entries, want 1", c.name, n)
		}
	}
	if v := counterValue(p.met.auditErrors); v != 0 {
		t.Errorf("%v audit errors counted", v)
	}
}
