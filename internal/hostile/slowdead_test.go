package hostile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// throttled delays every chunk message the device receives: a device on a
// slow link (fault injection, not a wait for a condition).
type throttled struct {
	broker.Transport
	delay time.Duration
}

func (s throttled) Subscribe(ctx context.Context, f schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	if o.Family != broker.FamilyChunk {
		return s.Transport.Subscribe(ctx, f, h, o)
	}
	return s.Transport.Subscribe(ctx, f, func(ctx context.Context, m broker.Message) {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return
		}
		h(ctx, m)
	}, o)
}

// TestSlowAndDeadDevice: one campaign to a fast device, a throttled one
// (each chunk message delayed 40 ms) and a dead one (registered, never
// connects). The fast device confirms without waiting for the others, the
// slow one confirms later, and the publisher marks the dead one timed out.
func TestSlowAndDeadDevice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := quietLogger()
	topics := testutil.UniqueTopics(t)
	ms := testutil.StartMochi(t, broker.MQTTServerConfig{Topics: topics, Logger: log})
	ns := testutil.StartNATS(t, broker.NATSServerConfig{DataDir: t.TempDir(), Topics: topics, Logger: log})
	natsT, err := broker.DialNATS(ctx, broker.Config{URL: ns.URL(), Topics: topics, ClientID: "sd-js", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsT.Close(context.Background()) })
	pubT := testutil.Dial(t, broker.Config{URL: ms.URL(), Topics: topics, ClientID: "sd-pub", SharedMember: true, Logger: log})
	life, stop := context.WithCancel(context.Background())
	key := "fk-sd-admin-0123456789abcdef"
	// The default wave hold (3s) is capped at NoProgress/2, 1s here: the
	// dead device never listens, so every wave is held that long, and the
	// slow device waiting for it must not be timed out for it.
	p, err := publisher.New(life, publisher.Config{JetStream: natsT.JetStream(), Transport: pubT, Topics: topics,
		Namespace: topics.Root(), Logger: log, BootstrapKey: key, ChunkSize: chunkSize,
		TickInterval: 50 * time.Millisecond, StartWindow: 10 * time.Millisecond, NoProgress: 2 * time.Second, NoticeSigners: []suit.Signer{trustedSigner(t)}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.Run(life) }()
	t.Cleanup(func() { stop(); wg.Wait() })
	<-p.Ready()

	img := image(8, 40<<10)
	trust, _ := suit.ParseTrustPEM(readFile(t, "keys/trusted.pub.pem"))
	var mu sync.Mutex
	confirmedAt := map[string]time.Time{}
	boots := map[string]*rig{}
	for _, d := range []struct {
		id    string
		delay time.Duration
	}{{"dev-fast", 0}, {"dev-slow", 40 * time.Millisecond}} {
		r := &rig{t: t}
		r.installFactory(ctx)
		boots[d.id] = r
		var tr broker.Transport = testutil.Dial(t, broker.Config{URL: ms.URL(), Topics: topics, ClientID: d.id, Logger: log})
		if d.delay > 0 {
			tr = throttled{Transport: tr, delay: d.delay}
		}
		a, err := deviceagent.New(deviceagent.Config{
			DeviceID: d.id, Class: deviceClass, Transport: tr, Topics: topics, Dialect: fetcher.MQTT,
			Identity: suit.Identity{VendorID: vendorID, ClassIDs: [][]byte{classID}, DeviceID: deviceUUID},
			Boot:     r.boot, StateDir: filepath.Join(t.TempDir(), "state"), Trust: trust, Logger: log,
			ChunkIdle: 300 * time.Millisecond,
			// Progress is reported when the fetcher persists, every 4 chunks
			// here: well inside the publisher's 2 s no-progress limit.
			PersistEvery: 4,
			OnState: func(rec deviceagent.Record) {
				if rec.State == schemas.StateConfirmed {
					mu.Lock()
					confirmedAt[d.id] = time.Now()
					mu.Unlock()
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(life) }()
	}

	admin, err := p.Authenticate(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-fast", "dev-slow", "dev-dead"} {
		if _, _, err := p.AddDevice(ctx, admin, publisher.NewDevice{ID: id, Class: deviceClass}); err != nil {
			t.Fatal(err)
		}
	}
	up, _, err := p.UploadImage(ctx, admin, "v6", bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := suit.ParsePrivateKeyPEM(readFile(t, "keys/trusted.pem"))
	signer, _ := suit.NewKeySigner(sk, suit.EdDSA)
	env, err := suit.Create(ctx, suit.CreateOptions{Image: bytes.NewReader(img), VendorID: vendorID, ClassID: classID, Seq: 6, ChunkSize: chunkSize}, signer)
	if err != nil {
		t.Fatal(err)
	}
	dg, _ := hex.DecodeString(up.Digest)
	start := time.Now()
	c, err := p.CreateCampaign(ctx, admin, schemas.CampaignSpec{Image: dg, Envelope: env,
		Devices: []string{"dev-fast", "dev-slow", "dev-dead"}, Start: true,
		FailPermille: 1000}) // a dead device (or a slow one marked timed out for a while) must not abort it

	if err != nil {
		t.Fatal(err)
	}
	var st publisher.Status
	for {
		if st, err = p.CampaignStatus(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		// A timed-out device counts as failed, reason timeout.
		if st.Counts["confirmed"] == 2 && st.Counts["failed.timeout"] == 1 {
			break
		}
		if st.State != "running" {
			t.Fatalf("campaign ended: %+v", st)
		}
		select { // campaign state is only visible by asking
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("campaign: %+v", st)
		}
	}
	stop()
	wg.Wait()
	mu.Lock()
	fast, slow := confirmedAt["dev-fast"], confirmedAt["dev-slow"]
	mu.Unlock()
	if fast.IsZero() || slow.IsZero() || !fast.Before(slow) {
		t.Fatalf("confirmed: fast %v, slow %v", fast, slow)
	}
	for id, r := range boots {
		bs, err := r.boot.Status()
		if err != nil || bs.Active.Digest != sha256.Sum256(img) || bs.Trial {
			t.Errorf("%s after the campaign: %+v %v", id, bs.Active, err)
		}
	}
	t.Logf("fast device confirmed after %v, slow after %v; dead device timed out; campaign %s %v",
		fast.Sub(start).Round(time.Millisecond), slow.Sub(start).Round(time.Millisecond), st.State, st.Counts)
}
