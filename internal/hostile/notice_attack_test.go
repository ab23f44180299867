package hostile

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// noticeMangler is a device on an open broker (anything may publish
// anywhere, as on a throwaway test broker) that watches every device's
// notice topic and, for each genuine notice it sees, publishes on every
// other device's topic: the notice itself (misrouted), and a copy for
// that device with the envelope tampered (forged), retained.
type noticeMangler struct {
	t      *testing.T
	tr     broker.Transport
	topics schemas.Topics
	devs   []string

	mu   sync.Mutex
	seen map[string]bool // notices already mangled (by payload)
	sent int
}

func (m *noticeMangler) start(ctx context.Context) {
	_, err := m.tr.Subscribe(ctx, m.topics.NoticesAll(), func(ctx context.Context, msg broker.Message) {
		var n schemas.UpdateNotice
		if len(msg.Payload) == 0 || schemas.Decode(msg.Payload, &n) != nil {
			return
		}
		m.mu.Lock()
		if m.seen[string(msg.Payload)] {
			m.mu.Unlock()
			return
		}
		m.seen[string(msg.Payload)] = true
		m.mu.Unlock()
		for _, d := range m.devs {
			if d == n.Target {
				continue
			}
			forged := n
			forged.Target = d
			forged.Envelope = append([]byte(nil), n.Envelope...)
			forged.Envelope[len(forged.Envelope)-1] ^= 1
			fb, err := schemas.Encode(&forged) // keeps n's signature: it no longer matches
			if err != nil {
				continue
			}
			tp, _ := m.topics.Notice(d)
			for _, b := range [][]byte{msg.Payload, fb} {
				m.mu.Lock()
				m.seen[string(b)] = true
				m.sent++
				m.mu.Unlock()
				_ = m.tr.Publish(ctx, tp, b, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
			}
		}
	}, broker.SubscribeOptions{Family: broker.FamilyNotice})
	if err != nil {
		m.t.Fatal(err)
	}
}

// TestManglerCannotFailOrStallCampaign runs a real publisher and six real
// device agents on an open broker with a device that misroutes and forges
// notices: dev-0 is the first phase; as soon as its notice appears, every
// other device gets dev-0's genuine notice and a forged copy naming the
// campaign and the image with a tampered envelope, before its own phase
// opens. Every device must end confirmed on the new image, the campaign
// must complete with no failure, and the forgeries must reach the
// publisher only as security events. On the code before the fix, each
// forged copy was recorded and failed as the campaign's outcome, the
// genuine notice was then ignored, and the campaign aborted at its
// failure threshold.
func TestManglerCannotFailOrStallCampaign(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	log := quietLogger()
	topics := testutil.UniqueTopics(t)
	ns := testutil.StartNATS(t, broker.NATSServerConfig{DataDir: t.TempDir(), Topics: topics, Logger: log})
	natsT, err := broker.DialNATS(ctx, broker.Config{URL: ns.URL(), Topics: topics, ClientID: "mangle-js", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsT.Close(context.Background()) })
	hub := testutil.NewMemHub() // the open broker
	life, stop := context.WithCancel(context.Background())
	key := "fk-mangle-admin-0123456789abcdef"
	var secEvents atomic.Int64
	p, err := publisher.New(life, publisher.Config{JetStream: natsT.JetStream(), Transport: hub.Conn(), Topics: topics,
		Namespace: topics.Root(), Logger: log, BootstrapKey: key, ChunkSize: chunkSize, NoticeSigners: []suit.Signer{trustedSigner(t)},
		TickInterval: 50 * time.Millisecond, StartWindow: -1, NoProgress: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.Run(life) }()
	t.Cleanup(func() { stop(); wg.Wait() })
	<-p.Ready()
	// Count security events as the publisher takes them.
	sub, err := hub.Conn().Subscribe(ctx, topics.ReportsAll(), func(_ context.Context, m broker.Message) {
		var r schemas.DeviceReport
		if schemas.Decode(m.Payload, &r) == nil && r.Security {
			secEvents.Add(1)
		}
	}, broker.SubscribeOptions{Family: broker.FamilyReport})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe(context.Background())

	img := image(9, 20<<10)
	trust, _ := suit.ParseTrustPEM(readFile(t, "keys/trusted.pub.pem"))
	var devs []string
	boots := map[string]*rig{}
	for i := range 6 {
		id := fmt.Sprintf("dev-%d", i)
		devs = append(devs, id)
		r := &rig{t: t}
		r.installFactory(ctx)
		boots[id] = r
		a, err := deviceagent.New(deviceagent.Config{
			DeviceID: id, Class: deviceClass, Transport: hub.Conn(), Topics: topics,
			Identity: suit.Identity{VendorID: vendorID, ClassIDs: [][]byte{classID}, DeviceID: deviceUUID},
			Boot:     r.boot, StateDir: filepath.Join(t.TempDir(), "state"), Trust: trust, Logger: log,
			ChunkIdle: 300 * time.Millisecond, RetryBase: 50 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(life) }()
	}
	mangler := &noticeMangler{t: t, tr: hub.Conn(), topics: topics, devs: devs, seen: map[string]bool{}}
	mangler.start(ctx)

	admin, err := p.Authenticate(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range devs {
		if _, _, err := p.AddDevice(ctx, admin, publisher.NewDevice{ID: id, Class: deviceClass}); err != nil {
			t.Fatal(err)
		}
	}
	up, _, err := p.UploadImage(ctx, admin, "v6", bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	env, err := suit.Create(ctx, suit.CreateOptions{Image: bytes.NewReader(img), VendorID: vendorID, ClassID: classID, Seq: 6, ChunkSize: chunkSize}, trustedSigner(t))
	if err != nil {
		t.Fatal(err)
	}
	dg, _ := hex.DecodeString(up.Digest)
	c, err := p.CreatePhasedCampaign(ctx, admin, schemas.CampaignSpec{Image: dg, Envelope: env, SuccessPermille: 1000, Start: true},
		[][]string{devs[:1], devs[1:]})
	if err != nil {
		t.Fatal(err)
	}
	var st publisher.Status
	for {
		if st, err = p.CampaignStatus(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		if st.State != publisher.CampaignRunning {
			break
		}
		select { // campaign state is only visible by asking
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("campaign still running: %+v", st)
		}
	}
	if st.State != publisher.CampaignCompleted || st.Counts["confirmed"] != 6 || st.Counts["failed"] != 0 {
		t.Errorf("campaign %s (%s), counts %v; want completed with 6 confirmed, none failed", st.State, st.Reason, st.Counts)
	}
	stop()
	wg.Wait()
	for id, r := range boots {
		bs, err := r.boot.Status()
		if err != nil || bs.Active.Version != 6 || bs.Trial {
			t.Errorf("%s after the campaign: version %d trial %v %v", id, bs.Active.Version, bs.Trial, err)
		}
	}
	mangler.mu.Lock()
	sent := mangler.sent
	mangler.mu.Unlock()
	events := secEvents.Load()
	if sent == 0 || events == 0 {
		t.Errorf("the mangler sent %d notices, devices reported %d security events: the attack did not run", sent, events)
	}
	t.Logf("campaign %s %v; mangler published %d misrouted or forged notices; %d security reports", st.State, st.Counts, sent, events)
}
