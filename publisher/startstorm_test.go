package publisher

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestOldNATSServerSurvivesStartStorm starts a fleet of NATS devices and
// two publisher instances at the same moment against Debian's
// nats-server 2.9.10 (a process of its own), which panics when a stream
// update races the stream's creation. Devices must not create or update
// anything (they wait for the notice stream), and the publishers create
// each stream and bucket once and update none, so no update can race a
// create (the server's advisories show it), the server stays up, and
// every device then gets its notice and the campaign completes.
func TestOldNATSServerSurvivesStartStorm(t *testing.T) {
	np := testutil.StartNATSProcess(t)
	adv := testutil.WatchStreamAdvisories(t, np.URL())
	e := realEnv(t, np.URL(), np.URL())
	const devices = 80
	f := newFleet(e)
	rs := make([]*responder, devices)
	for i := range rs {
		rs[i] = f.prepare(devName(i), false, false)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		running.Wait()
	})
	pubs := make([]*Publisher, 2)
	cfgs := make([]Config, len(pubs))
	for i := range cfgs {
		cfgs[i] = e.cfg
		cfgs[i].Instance = fmt.Sprintf("storm-%d", i)
		cfgs[i].Transport = e.dial("pub-"+cfgs[i].Instance, true)
	}

	start := make(chan struct{})
	errs := make(chan error, devices+len(pubs))
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
			defer scancel()
			if err := r.subscribe(sctx); err != nil {
				errs <- fmt.Errorf("device %s: %w", r.id, err)
			}
		}()
	}
	for i := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p, err := New(ctx, cfgs[i])
			if err != nil {
				errs <- fmt.Errorf("publisher %d: %w", i, err)
				return
			}
			pubs[i] = p
			running.Add(1)
			go func() {
				defer running.Done()
				_ = p.Run(ctx)
			}()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The server is still up.
	if log := np.Log(); strings.Contains(log, "panic") {
		t.Fatalf("nats-server panicked:\n%s", log)
	}
	nc, err := nats.Connect(np.URL(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("nats-server is gone after the start storm: %v\nlog:\n%s", err, np.Log())
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	if _, err := js.AccountInfo(actx); err != nil {
		t.Fatalf("JetStream after the start storm: %v\nlog:\n%s", err, np.Log())
	}
	adv.Sync(t)
	if u := adv.Updated(); len(u) != 0 {
		t.Errorf("streams updated during the start: %v; want none (each created once)", u)
	}
	created := map[string]int{}
	for _, n := range adv.Created() {
		created[n]++
	}
	if n := created[broker.NoticeStreamName(e.cfg.Topics)]; n != 1 || len(created) != 13 {
		t.Errorf("streams created: %v; want 13 (9 buckets, images, audit, events, notices), once each", created)
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, p := range pubs {
		select {
		case <-p.Ready():
		case <-time.After(20 * time.Second):
			t.Fatal("publisher not ready")
		}
	}

	// Every device gets its notice.
	img := setupFleet(t, e, pubs[0], devices)
	c, err := pubs[1].CreateCampaign(context.Background(), e.who(pubs[1]), schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Class: "sensor", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() string { return fmt.Sprint(statusOf_(t, pubs[0], c.ID)) }, func() bool {
		return statusOf_(t, pubs[0], c.ID).State == CampaignCompleted
	})
	for _, r := range rs {
		if g := f.get(r.id); g.notices == 0 || g.confirmed == 0 {
			t.Errorf("%s: %d notices, confirmed %v", r.id, g.notices, g.confirmed != 0)
		}
	}
}
