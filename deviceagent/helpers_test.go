package deviceagent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

const (
	testChunk   = 1024
	testSectors = 17 // per region: 1 header sector + 64 KiB of image
)

var (
	testGeom   = bootctl.Geometry{SectorSize: 4096, WriteAlign: 16}
	testLayout = bootctl.DefaultLayout(1, 2, testSectors)
	vendorID   = bytes.Repeat([]byte{0xfa}, 16)
	classID    = bytes.Repeat([]byte{0xc1}, 16)
	deviceKey  = bytes.Repeat([]byte{0x42}, 32)
)

func init() { testGeom.Sectors = testLayout.Sectors() }

// world is the test-side backend: keys, images and a publisher stand-in
// (notices, chunk server, report collector) over one transport.
type world struct {
	t      *testing.T
	topics schemas.Topics
	pub    broker.Transport
	dial   func(t *testing.T, id string) broker.Transport
	key    crypto.Signer
	signer suit.Signer
	trust  suit.TrustAnchors
	v1     []byte

	mu      sync.Mutex
	reports []schemas.DeviceReport
	badRep  int
	changed chan struct{}
}

func testImage(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testKey(seed byte) crypto.Signer {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
}

func signerFor(t testing.TB, k crypto.Signer) suit.Signer {
	s, err := suit.NewKeySigner(k, suit.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newWorld wires a publisher stand-in on pub; dial makes device transports.
func newWorld(t *testing.T, topics schemas.Topics, pub broker.Transport, dial func(t *testing.T, id string) broker.Transport) *world {
	k := testKey(1)
	w := &world{t: t, topics: topics, pub: pub, dial: dial, key: k, signer: signerFor(t, k),
		trust: suit.TrustAnchors{k.Public()}, v1: testImage(1, 30000), changed: make(chan struct{}, 1)}
	sub, err := pub.Subscribe(context.Background(), topics.ReportsAll(), func(ctx context.Context, m broker.Message) {
		var r schemas.DeviceReport
		w.mu.Lock()
		defer w.mu.Unlock()
		if err := schemas.Decode(m.Payload, &r); err != nil {
			w.badRep++
			return
		}
		w.reports = append(w.reports, r)
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}, broker.SubscribeOptions{Family: broker.FamilyReport})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe(context.Background()) })
	return w
}

func memWorld(t *testing.T) *world {
	hub := testutil.NewMemHub()
	return newWorld(t, schemas.MustTopics("agenttest"), hub.Conn(), func(*testing.T, string) broker.Transport { return hub.Conn() })
}

// envelope signs a manifest for img.
func (w *world) envelope(img []byte, seq uint64, mod func(*suit.CreateOptions), signer suit.Signer) []byte {
	w.t.Helper()
	o := suit.CreateOptions{Image: bytes.NewReader(img), VendorID: vendorID, ClassID: classID, Seq: seq, ChunkSize: testChunk}
	if mod != nil {
		mod(&o)
	}
	if signer == nil {
		signer = w.signer
	}
	env, err := suit.Create(context.Background(), o, signer)
	if err != nil {
		w.t.Fatal(err)
	}
	return env
}

// serve starts a chunk server for img.
func (w *world) serve(img []byte, tune func(*testutil.ChunkServer)) *testutil.ChunkServer {
	w.t.Helper()
	tab, err := schemas.BuildChunkTable(bytes.NewReader(img), testChunk)
	if err != nil {
		w.t.Fatal(err)
	}
	cs := &testutil.ChunkServer{Transport: w.pub, Topics: w.topics, Image: img, Table: tab}
	if tune != nil {
		tune(cs)
	}
	if err := cs.Start(context.Background()); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { cs.Stop(context.Background()) })
	return cs
}

// notice publishes a retained notice to a device (or a class announce).
func (w *world) notice(campaign, target string, class bool, img, env []byte, hints ...schemas.SourceHint) {
	w.t.Helper()
	n := w.newNotice(campaign, target, img, env, hints...)
	n.ClassTarget = class
	w.raw(target, class, w.signNotice(n, w.signer))
}

// encodeNotice returns a notice signed by the world's key (the campaign
// authority the devices trust).
func (w *world) encodeNotice(campaign, target string, img, env []byte, hints ...schemas.SourceHint) []byte {
	w.t.Helper()
	return w.signNotice(w.newNotice(campaign, target, img, env, hints...), w.signer)
}

// newNotice returns an unsigned notice.
func (w *world) newNotice(campaign, target string, img, env []byte, hints ...schemas.SourceHint) *schemas.UpdateNotice {
	d := sha256.Sum256(img)
	return &schemas.UpdateNotice{V: schemas.Version, Campaign: campaign, Target: target, Envelope: env, Image: d[:], ChunkSize: testChunk, Sources: hints}
}

// signNotice signs n with s and encodes it.
func (w *world) signNotice(n *schemas.UpdateNotice, s suit.Signer) []byte {
	w.t.Helper()
	if err := suit.SignNotice(context.Background(), n, s); err != nil {
		w.t.Fatal(err)
	}
	b, err := schemas.Encode(n)
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

// raw publishes bytes, retained, on a notice or announce topic, and
// clears the retained message at cleanup.
func (w *world) raw(target string, class bool, b []byte) {
	w.t.Helper()
	tp, err := w.topics.Notice(target)
	if class {
		tp, err = w.topics.Announce(target)
	}
	if err != nil {
		w.t.Fatal(err)
	}
	retain := !class || w.pub.Dialect() == broker.DialectMQTT // NATS retains per-device notices only
	if err := w.pub.Publish(context.Background(), tp, b, broker.PublishOptions{Family: broker.FamilyNotice, Retain: retain}); err != nil {
		w.t.Fatal(err)
	}
	if retain {
		w.t.Cleanup(func() {
			w.pub.Publish(context.Background(), tp, nil, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
		})
	}
}

// waitReport waits for a report of dev matching ok, and returns it.
func (w *world) waitReport(dev string, d time.Duration, ok func(r schemas.DeviceReport) bool) schemas.DeviceReport {
	w.t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	seen := 0
	for {
		w.mu.Lock()
		for ; seen < len(w.reports); seen++ {
			if r := w.reports[seen]; r.Device == dev && ok(r) {
				w.mu.Unlock()
				return r
			}
		}
		w.mu.Unlock()
		select {
		case <-w.changed:
		case <-deadline.C:
			w.t.Fatalf("no matching report from %s within %v; got:\n%s", dev, d, w.dump(dev))
		}
	}
}

func (w *world) waitState(dev string, s schemas.State, d time.Duration) schemas.DeviceReport {
	w.t.Helper()
	return w.waitReport(dev, d, func(r schemas.DeviceReport) bool { return r.State == s })
}

func (w *world) reportsOf(dev string) []schemas.DeviceReport {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []schemas.DeviceReport
	for _, r := range w.reports {
		if r.Device == dev {
			out = append(out, r)
		}
	}
	return out
}

func (w *world) dump(dev string) string {
	var b strings.Builder
	for _, r := range w.reportsOf(dev) {
		b.WriteString("  " + r.State.String() + " " + r.Code.String() + " " + r.Text + "\n")
	}
	return b.String()
}

// device is one simulated device: flash, state dir and a running agent.
type device struct {
	w     *world
	id    string
	flash *bootctl.Flash
	dir   string
	tune  func(*Config)

	cancel context.CancelFunc
	done   chan error
	agent  *Agent
	tr     broker.Transport
}

// newDevice makes a device running v1 (version 1, confirmed).
func (w *world) newDevice(id string, tune func(*Config)) *device {
	w.t.Helper()
	f, err := bootctl.NewMemFlash(testGeom)
	if err != nil {
		w.t.Fatal(err)
	}
	bd, err := bootctl.Open(f, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx := context.Background()
	info := bootctl.CandidateInfo{Version: 1, SecurityCounter: 1, Digest: sha256.Sum256(w.v1)}
	if err := bd.Stage(ctx, 0, w.v1, info); err != nil {
		w.t.Fatal(err)
	}
	if _, err := bd.Boot(ctx); err != nil {
		w.t.Fatal(err)
	}
	if err := bd.Confirm(); err != nil {
		w.t.Fatal(err)
	}
	return &device{w: w, id: id, flash: f, dir: w.t.TempDir(), tune: tune}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// start (re)starts the device's agent, as after a reset: a new bootctl
// view of the same flash, a new transport, the same state directory.
func (d *device) start() {
	t := d.w.t
	t.Helper()
	bd, err := bootctl.Open(d.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
	if err != nil {
		t.Fatal(err)
	}
	d.tr = d.w.dial(t, d.id)
	cfg := Config{
		DeviceID: d.id, Class: "cls", Identity: suit.Identity{VendorID: vendorID, ClassIDs: [][]byte{classID}, DeviceID: []byte(d.id)},
		Transport: d.tr, Topics: d.w.topics, Boot: bd, StateDir: d.dir, Trust: d.w.trust,
		Logger: testLogger(t), ChunkIdle: 150 * time.Millisecond, RetryBase: 20 * time.Millisecond, PersistEvery: 4,
		Fetch: fetcher.RetryPolicy{Base: time.Millisecond, Cap: 5 * time.Millisecond, MaxRetries: 1},
	}
	if d.tune != nil {
		d.tune(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.agent, d.cancel, d.done = a, cancel, make(chan error, 1)
	go func() { d.done <- a.Run(ctx) }()
	t.Cleanup(d.stop)
}

// stop stops the agent (a kill: nothing more is persisted) and waits.
func (d *device) stop() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		d.w.t.Errorf("agent %s did not stop", d.id)
	}
	d.tr.Close(context.Background())
	d.cancel = nil
}

// active returns the active image's header.
func (d *device) active() bootctl.ImageInfo {
	d.w.t.Helper()
	bd, err := bootctl.Open(d.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
	if err != nil {
		d.w.t.Fatal(err)
	}
	st, err := bd.Status()
	if err != nil {
		d.w.t.Fatal(err)
	}
	return st.Active
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
