package hostile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// rig is a running firmcast: the embedded MQTT v5 and NATS brokers with
// their access policy, an in-process publisher, and device A's agent on a
// file-backed flash with the factory image (v1, version 5) confirmed. A
// backend-role connection publishes notices and watches every report.
type rig struct {
	t          *testing.T
	topics     schemas.Topics
	creds      *broker.CredentialStore
	mqttURL    string
	backend    broker.Transport
	inst       *stack.Instance
	pub        *publisher.Publisher
	adminKey   string
	http       *httptest.Server
	devT       broker.Transport // device A's own connection
	boot       *bootctl.Device
	stateDir   string
	agent      *deviceagent.Agent
	stop       context.CancelFunc
	runDone    chan error
	factory    [32]byte
	flashPath  string
	activeSnap []byte           // the active region as installed
	live       string           // the live campaign's id, once started
	liveT      broker.Transport // device B's connection

	mu      sync.Mutex
	reports []schemas.DeviceReport
	changed chan struct{}
}

var (
	geom   = bootctl.Geometry{SectorSize: 4096, WriteAlign: 16}
	layout = bootctl.DefaultLayout(1, 2, 17) // 64 KiB of image per slot
	devKey = bytes.Repeat([]byte{0x42}, 32)
)

const backendUser, backendSecret = "hostile-backend", "backend-secret-0123"

func quietLogger() *slog.Logger {
	if os.Getenv("HOSTILE_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", p))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func startRig(t *testing.T, ctx context.Context, mods ...func(*deviceagent.Config)) *rig {
	log := quietLogger()
	r := &rig{t: t, topics: testutil.UniqueTopics(t), changed: make(chan struct{}, 1)}
	r.creds = testutil.CredentialStore(t, nil)
	for _, a := range []struct {
		id     broker.Identity
		secret string
	}{
		{broker.Identity{Username: backendUser, Role: broker.RoleBackend}, backendSecret},
		{broker.Identity{Username: deviceID, Role: broker.RoleDevice, Device: deviceID, Class: deviceClass}, "secret-a-0123456789"},
		{broker.Identity{Username: otherDevice, Role: broker.RoleDevice, Device: otherDevice, Class: deviceClass}, "secret-b-0123456789"},
	} {
		if err := r.creds.Add(a.id, a.secret); err != nil {
			t.Fatal(err)
		}
	}
	ms := testutil.StartMochi(t, broker.MQTTServerConfig{Auth: r.creds, Topics: r.topics, Logger: log, MaxQueued: 1000})
	ns := testutil.StartNATS(t, broker.NATSServerConfig{DataDir: t.TempDir(), Auth: r.creds, Topics: r.topics, Logger: log})
	r.mqttURL = ms.URL()
	bcfg := func(url, id string) broker.Config {
		return broker.Config{URL: url, Topics: r.topics, ClientID: id, Username: backendUser, Password: backendSecret, Logger: log}
	}
	r.backend = testutil.Dial(t, bcfg(ms.URL(), "hostile-watch"))

	r.adminKey = "fk-hostile-admin-0123456789abcdef"
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.stop = cancel
	r.inst = stacktest.StartInstance(t, stack.InstanceConfig{
		NATSURL: ns.URL(), DeviceURLs: []string{ms.URL()}, Username: backendUser, Password: backendSecret,
		ClientID: "hostile-pub", Topics: r.topics, Logger: log,
		Publisher: publisher.Config{Namespace: r.topics.Root(), Logger: log, BootstrapKey: r.adminKey, NoticeSigners: []suit.Signer{trustedSigner(t)}},
	})
	r.pub = r.inst.Pub
	r.http = httptest.NewServer(r.pub.Handler())
	t.Cleanup(r.http.Close)

	sub, err := r.backend.Subscribe(ctx, r.topics.ReportsAll(), func(_ context.Context, m broker.Message) {
		var rep schemas.DeviceReport
		if schemas.Decode(m.Payload, &rep) != nil {
			return
		}
		r.mu.Lock()
		r.reports = append(r.reports, rep)
		r.mu.Unlock()
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}, broker.SubscribeOptions{Family: broker.FamilyReport})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe(context.Background()) })

	r.installFactory(ctx)
	r.devT = testutil.Dial(t, broker.Config{URL: ms.URL(), Topics: r.topics, ClientID: deviceID, Username: deviceID,
		Password: "secret-a-0123456789", Logger: log})
	trust, err := suit.ParseTrustPEM(readFile(t, "keys/trusted.pub.pem"))
	if err != nil {
		t.Fatal(err)
	}
	r.stateDir = filepath.Join(t.TempDir(), "state")
	acfg := deviceagent.Config{
		DeviceID: deviceID, Class: deviceClass, Transport: r.devT, Topics: r.topics,
		Identity: suit.Identity{VendorID: vendorID, ClassIDs: [][]byte{classID}, DeviceID: deviceUUID},
		Boot:     r.boot, StateDir: r.stateDir, Trust: trust, Logger: log, Keys: deviceKEK(deviceID),
		MaxAttempts: 1, ChunkIdle: 150 * time.Millisecond, RetryBase: 50 * time.Millisecond,
		Fetch: fetcher.RetryPolicy{Base: 10 * time.Millisecond, Cap: 20 * time.Millisecond, MaxRetries: -1},
	}
	for _, m := range mods {
		m(&acfg)
	}
	r.agent, err = deviceagent.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	r.runDone = make(chan error, 1)
	go func() { r.runDone <- r.agent.Run(life) }()
	t.Cleanup(func() {
		cancel()
		<-r.runDone
	})
	r.waitReport(5*time.Second, 0, func(rep schemas.DeviceReport) bool { return rep.Device == deviceID && rep.Text == "connected" })
	return r
}

// installFactory creates the flash and installs v1 as version 5, as the
// production line would: stage, boot, confirm.
func (r *rig) installFactory(ctx context.Context) {
	t := r.t
	g := geom
	g.Sectors = layout.Sectors()
	r.flashPath = filepath.Join(t.TempDir(), "flash")
	fl, err := bootctl.CreateFileFlash(r.flashPath, g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fl.Close() })
	if r.boot, err = bootctl.Open(fl, layout, bootctl.RootOfTrust{DeviceKey: devKey}); err != nil {
		t.Fatal(err)
	}
	img := readFile(t, "images/v1.bin")
	r.factory = sha256.Sum256(img)
	cand, err := r.boot.OpenCandidate(ctx, 0, uint64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cand.WriteAt(img, 0); err != nil {
		t.Fatal(err)
	}
	if err := cand.Commit(ctx, bootctl.CandidateInfo{Version: factoryVersion, SecurityCounter: factoryVersion, Digest: r.factory, Campaign: "factory"}); err != nil {
		t.Fatal(err)
	}
	if dec, err := r.boot.Boot(ctx); err != nil || !dec.Booted || dec.Digest != bootctl.Digest(r.factory) {
		t.Fatalf("factory boot: %+v %v", dec, err)
	}
	if err := r.boot.Confirm(); err != nil {
		t.Fatal(err)
	}
	if err := fl.Sync(); err != nil {
		t.Fatal(err)
	}
	r.activeSnap = r.activeRegion()
	if bytes.Count(r.activeSnap, []byte{0}) == len(r.activeSnap) {
		t.Fatal("the active region reads as erased after the factory install")
	}
}

// mark returns the number of reports seen so far.
func (r *rig) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reports)
}

// waitReport returns the first report after index from that satisfies ok.
func (r *rig) waitReport(d time.Duration, from int, ok func(schemas.DeviceReport) bool) (schemas.DeviceReport, bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for ; from < len(r.reports); from++ {
			if rep := r.reports[from]; ok(rep) {
				r.mu.Unlock()
				return rep, true
			}
		}
		r.mu.Unlock()
		select {
		case <-r.changed:
		case <-deadline.C:
			return schemas.DeviceReport{}, false
		}
	}
}

// checkDevice asserts the device is intact: the agent and publisher run,
// the active region is byte-identical to the installed one, and the
// agent's state file loads.
func (r *rig) checkDevice(name string) {
	t := r.t
	select {
	case err := <-r.runDone:
		t.Fatalf("%s: the agent stopped: %v", name, err)
	case <-r.inst.Done():
		t.Fatalf("%s: the publisher stopped: %v", name, r.inst.Err())
	default:
	}
	if got := r.activeRegion(); !bytes.Equal(got, r.activeSnap) {
		t.Fatalf("%s: the active region (header and image) changed", name)
	}
	if _, err := deviceagent.LoadState(r.stateDir); err != nil {
		t.Fatalf("%s: state file: %v", name, err)
	}
}

// activeRegion reads the active region (header sectors and image) from
// the flash file through its own file handle: the agent owns the
// bootctl.Device, which is not safe for concurrent use, and the active
// region is never written while a hostile input is refused.
func (r *rig) activeRegion() []byte {
	f, err := os.Open(r.flashPath)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, layout.Active.Sectors*geom.SectorSize)
	if _, err := f.ReadAt(b, int64(layout.Active.Start*geom.SectorSize)); err != nil {
		r.t.Fatal(err)
	}
	return b
}
