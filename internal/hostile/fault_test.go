package hostile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
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

// requestLog wraps a device transport and records the chunks it asks for.
type requestLog struct {
	broker.Transport
	n      uint32
	mu     sync.Mutex
	after  bool            // the broker has restarted
	before int             // requests before the restart
	wanted map[uint32]bool // distinct chunks asked for after the restart

	dropRate float64    // share of chunk messages dropped on arrival
	rnd      *rand.Rand // deterministic drops
	got      int        // chunk messages delivered to the agent
	dropped  int
}

// Subscribe drops dropRate of the chunk messages before the agent sees
// them (a whole-message loss, as a lossy link or an overloaded broker
// would cause at QoS 0).
func (l *requestLog) Subscribe(ctx context.Context, f schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	if o.Family != broker.FamilyChunk {
		return l.Transport.Subscribe(ctx, f, h, o)
	}
	return l.Transport.Subscribe(ctx, f, func(ctx context.Context, m broker.Message) {
		l.mu.Lock()
		drop := l.rnd.Float64() < l.dropRate
		if drop {
			l.dropped++
		} else {
			l.got++
		}
		l.mu.Unlock()
		if !drop {
			h(ctx, m)
		}
	}, o)
}

func (l *requestLog) Publish(ctx context.Context, t schemas.Topic, p []byte, o broker.PublishOptions) error {
	if o.Family == broker.FamilyChunkRequest {
		var req schemas.ChunkRequest
		if schemas.Decode(p, &req) == nil {
			bm := req.Wanted(l.n)
			l.mu.Lock()
			if !l.after {
				l.before++
			}
			for i := range l.n {
				if l.after && bm.Has(i) {
					l.wanted[i] = true
				}
			}
			l.mu.Unlock()
		}
	}
	return l.Transport.Publish(ctx, t, p, o)
}

// TestRestartMidDownload: fault scenarios over the real publisher and
// agent. While the device is downloading, one of them is killed and
// restarted: the MQTT broker (a mosquitto process the test owns,
// configured from the generated policy files), the NATS server holding the
// publisher's JetStream state (a nats-server process), or the publisher
// itself (a new instance on the same JetStream state). The device finishes
// (the campaign counts it confirmed, bootctl runs the new image), and after
// the restart it asks only for chunks it had not verified.
func TestRestartMidDownload(t *testing.T) {
	for _, kind := range []string{"mosquitto", "nats-server", "publisher", "device-cut-off"} {
		t.Run(kind, func(t *testing.T) { faultCampaign(t, kind, 0) })
	}
}

// TestChunkLoss: none (the baseline), 5% and 20% of the chunk messages reaching the device are
// lost; the campaign completes through repair requests, and the test logs
// the publisher's chunk egress relative to the image size (the
// firmcast_publisher_chunk_bytes_total counters, all kinds).
func TestChunkLoss(t *testing.T) {
	for _, rate := range []float64{0, 0.05, 0.20} {
		t.Run(fmt.Sprintf("%.0f%%", rate*100), func(t *testing.T) {
			egress := faultCampaign(t, "", rate)
			t.Logf("loss %.0f%%: chunk egress %.3fx the image", rate*100, egress)
		})
	}
}

// faultCampaign runs one campaign of a 40-chunk image to one device over
// mosquitto and a nats-server process, restarting kind ("" for none)
// mid-download and dropping dropRate of the chunk messages; it returns
// the publisher's chunk egress relative to the image size.
func faultCampaign(t *testing.T, kind string, dropRate float64) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := quietLogger()
	topics := testutil.UniqueTopics(t)
	devSecret := "secret-a-0123456789abcdef0123"
	mosq := testutil.StartMosquittoWithPolicy(t, topics, []broker.Account{
		{Identity: broker.Identity{Username: backendUser, Role: broker.RoleBackend}, Secret: backendSecret},
		{Identity: broker.Identity{Username: deviceID, Role: broker.RoleDevice, Device: deviceID, Class: deviceClass}, Secret: devSecret},
	})
	ns := testutil.StartNATSProcess(t)
	natsT, err := broker.DialNATS(ctx, broker.Config{URL: ns.URL(), Topics: topics, ClientID: "fault-js", Logger: log,
		ReconnectMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsT.Close(context.Background()) })
	pubT := testutil.Dial(t, broker.Config{URL: mosq.URL(), Topics: topics, ClientID: "fault-pub", Username: backendUser,
		Password: backendSecret, SharedMember: true, ReconnectMax: 200 * time.Millisecond, Logger: log})
	life, stop := context.WithCancel(context.Background())
	key := "fk-fault-admin-0123456789abcdef"
	var (
		pmu     sync.Mutex
		p       *publisher.Publisher
		pstop   context.CancelFunc
		pubDone chan error
	)
	startPublisher := func() {
		plife, pcancel := context.WithCancel(life)
		np, err := publisher.New(plife, publisher.Config{JetStream: natsT.JetStream(), Transport: pubT, Topics: topics,
			Namespace: topics.Root(), Logger: log, BootstrapKey: key, ChunkSize: chunkSize,
			TickInterval: 50 * time.Millisecond, StartWindow: 10 * time.Millisecond, RepairWindow: 20 * time.Millisecond,
			LeaseTTL: time.Second, NoticeSigners: []suit.Signer{trustedSigner(t)},
			// Paced, so the restart falls while chunks are still on the wire.
			MaxBytesPerSecond: 16 << 10})
		if err != nil {
			t.Error(err) // may run in the agent's goroutine
			pcancel()
			return
		}
		done := make(chan error, 1)
		go func() { done <- np.Run(plife) }()
		<-np.Ready()
		pmu.Lock()
		p, pstop, pubDone = np, pcancel, done
		pmu.Unlock()
	}
	startPublisher()
	pub := func() *publisher.Publisher { pmu.Lock(); defer pmu.Unlock(); return p }
	link := startLinkProxy(t, mosq.Addr()) // the device's link to the broker
	restart := map[string]func(){
		"mosquitto":   mosq.Restart,
		"nats-server": ns.Restart,
		"":            nil,
		// The device's link to the broker is cut for 1.5 s, longer than
		// its retry cap (200 ms): it reconnects when the link returns.
		"device-cut-off": func() {
			link.Cut()
			time.AfterFunc(1500*time.Millisecond, link.Restore)
		},
		"publisher": func() {
			pmu.Lock()
			cancel, done := pstop, pubDone
			pmu.Unlock()
			cancel()
			<-done
			startPublisher()
		},
	}[kind]

	// The device: factory image v1 at version 5, its agent on mosquitto.
	r := &rig{t: t}
	r.installFactory(ctx)
	img := image(7, 40<<10)
	n := uint32((len(img) + chunkSize - 1) / chunkSize)
	devT := testutil.Dial(t, broker.Config{URL: "mqtt://" + link.Addr(), Topics: topics, ClientID: deviceID, Username: deviceID,
		Password: devSecret, ReconnectMax: 200 * time.Millisecond, Logger: log})
	reqs := &requestLog{Transport: devT, n: n, wanted: map[uint32]bool{}, dropRate: dropRate, rnd: rand.New(rand.NewPCG(7, uint64(dropRate*1000)))}
	trust, _ := suit.ParseTrustPEM(readFile(t, "keys/trusted.pub.pem"))
	var once sync.Once
	verifiedAtRestart := uint64(0)
	agent, err := deviceagent.New(deviceagent.Config{
		DeviceID: deviceID, Class: deviceClass, Transport: reqs, Topics: topics, Dialect: fetcher.MQTT,
		Identity: suit.Identity{VendorID: vendorID, ClassIDs: [][]byte{classID}, DeviceID: deviceUUID},
		Boot:     r.boot, StateDir: filepath.Join(t.TempDir(), "state"), Trust: trust, Logger: log,
		ChunkIdle: 100 * time.Millisecond, RetryBase: 100 * time.Millisecond, RetryCap: 200 * time.Millisecond,
		MaxAttempts: 20, PersistEvery: 4,
		// The restart happens inside the first progress callback past 8
		// chunks, so it falls in the middle of the download every run.
		OnProgress: func(done, total uint64) {
			if restart == nil || done < 8*chunkSize || done >= total {
				return
			}
			once.Do(func() {
				verifiedAtRestart = done
				restart()
				reqs.mu.Lock()
				reqs.after = true
				reqs.mu.Unlock()
			})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(life) }()
	t.Cleanup(func() {
		stop()
		<-agentDone
		pmu.Lock()
		done := pubDone
		pmu.Unlock()
		<-done
	})

	// The campaign: upload, register the device, sign offline, start.
	p = pub()
	admin, err := p.Authenticate(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.AddDevice(ctx, admin, publisher.NewDevice{ID: deviceID, Class: deviceClass, Secret: devSecret}); err != nil {
		t.Fatal(err)
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
	c, err := p.CreateCampaign(ctx, admin, schemas.CampaignSpec{Image: dg, Envelope: env, Devices: []string{deviceID}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	var st publisher.Status
	statusErrors := 0
	for {
		// A short deadline per call: a JetStream request caught by the
		// nats-server restart can lose its reply and wait for the whole
		// deadline, so the status is asked again rather than waited on.
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		st, err = pub().CampaignStatus(cctx, c.ID)
		ccancel()
		if err != nil && ctx.Err() == nil {
			statusErrors++
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		if st.Counts["confirmed"] == 1 || st.Counts["failed"] > 0 || st.State != "running" {
			break
		}
		select { // campaign state is only visible by asking
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("campaign did not finish: %+v", st)
		}
	}
	if st.Counts["confirmed"] != 1 {
		t.Fatalf("campaign after the broker restart: %+v", st)
	}
	if verifiedAtRestart == 0 && restart != nil {
		t.Fatal("the broker was never restarted mid-download")
	}
	stop()
	<-agentDone
	agentDone <- nil
	bs, err := r.boot.Status()
	if err != nil || bs.Active.Digest != sha256.Sum256(img) || bs.Trial {
		t.Fatalf("device after the campaign: %+v %v", bs.Active, err)
	}
	reqs.mu.Lock()
	asked, before := len(reqs.wanted), reqs.before
	reqs.mu.Unlock()
	left := int(n) - int(verifiedAtRestart/chunkSize)
	t.Logf("%d chunks; %d chunk requests and %d chunks verified before the restart; %d distinct chunks asked for after it (at most %d were missing); %d status calls timed out",
		n, before, verifiedAtRestart/chunkSize, asked, left, statusErrors)
	if restart != nil && asked > left {
		t.Errorf("after the restart the device asked for %d distinct chunks, but only %d were missing", asked, left)
	}
	reqs.mu.Lock()
	t.Logf("chunk messages: %d delivered to the agent, %d dropped", reqs.got, reqs.dropped)
	reqs.mu.Unlock()
	if restart != nil {
		return 0 // a restarted publisher's counters start again at zero
	}
	return chunkEgress(t, pub()) / float64(len(img))
}

var chunkBytesMetric = regexp.MustCompile(`(?m)^firmcast_publisher_chunk_bytes_total\{kind="[a-z]+"\} ([0-9.e+]+)$`)

// chunkEgress sums the publisher's chunk egress counters.
func chunkEgress(t *testing.T, p *publisher.Publisher) float64 {
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sum := 0.0
	for _, g := range chunkBytesMetric.FindAllStringSubmatch(rec.Body.String(), -1) {
		v, _ := strconv.ParseFloat(g[1], 64)
		sum += v
	}
	if sum == 0 {
		t.Fatal("no chunk egress counted")
	}
	return sum
}
