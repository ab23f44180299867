package publisher

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// startJetStream starts an embedded nats-server with JetStream in a temp
// dir and returns a JetStream handle; both stop at cleanup.
func startJetStream(t testing.TB) (jetstream.JetStream, *nats.Conn) {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	t.Cleanup(func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return js, nc
}

// testEnv is a publisher on an embedded NATS and an in-memory broker.
type testEnv struct {
	t  testing.TB
	js jetstream.JetStream
	// hub is the in-memory broker (on NATS subjects); nil when the env runs
	// on real brokers.
	hub   *testutil.MemHub
	clock *fakeClock
	admin string
	cfg   Config
	// dial connects a client (a device, or with shared a publisher).
	dial func(id string, shared bool) broker.Transport
}

func newHub() *testutil.MemHub {
	h := testutil.NewMemHub()
	h.NATS = true
	return h
}

const testAdminKey = "test-admin-key-0123456789abcdef"

func newEnv(t testing.TB) *testEnv {
	js, _ := startJetStream(t)
	e := &testEnv{t: t, js: js, hub: newHub(), clock: newFakeClock(), admin: testAdminKey}
	e.dial = func(string, bool) broker.Transport { return e.hub.Conn() }
	e.cfg = Config{
		JetStream: js, Topics: schemas.MustTopics("fct"), Clock: e.clock,
		Logger:    testLogger(),
		ChunkSize: 1024, TickInterval: 5 * time.Millisecond, StartWindow: -1,
		BootstrapKey: testAdminKey, NoticeSigners: []suit.Signer{testNoticeSigner()},
	}
	return e
}

// testNoticeKey is the campaign authority's key of every test publisher.
var testNoticeKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x17}, 32))

func testNoticeSigner() suit.Signer {
	s, err := suit.NewKeySigner(testNoticeKey, suit.EdDSA)
	if err != nil {
		panic(err)
	}
	return s
}

// start creates a publisher with cfg edited by edit and runs it until the
// returned stop function (also called at cleanup) is called.
func (e *testEnv) start(edit func(*Config)) (*Publisher, func()) {
	e.t.Helper()
	cfg := e.cfg
	if edit != nil {
		edit(&cfg)
	}
	cfg.Transport = e.dial("pub-"+randomID("t")[2:10]+cfg.Instance, true)
	ctx, cancel := context.WithCancel(context.Background())
	p, err := New(ctx, cfg)
	if err != nil {
		cancel()
		e.t.Fatalf("New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	e.t.Cleanup(stop)
	select {
	case <-p.Ready():
	case err := <-done:
		e.t.Fatalf("Run: %v", err)
	}
	return p, stop
}

func (e *testEnv) who(p *Publisher) Principal {
	e.t.Helper()
	w, err := p.Authenticate(context.Background(), e.admin)
	if err != nil {
		e.t.Fatalf("admin key: %v", err)
	}
	return w
}

func randomImage(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// waitFor polls cond every few milliseconds until it holds or timeout
// passes (then it fails the test with msg).
func waitFor(t testing.TB, timeout time.Duration, msg func() string, cond func() bool) {
	t.Helper()
	tk := time.NewTicker(5 * time.Millisecond)
	defer tk.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-tk.C:
		case <-deadline:
			t.Fatalf("timed out after %s waiting: %s", timeout, msg())
		}
	}
}

// devPrefix makes this test process's device ids (which are also their
// MQTT client ids) its own: on the machine's shared brokers another test
// process using the same ids would take their sessions over.
var devPrefix = "dev" + randomID("")[1:7]

func devName(i int) string { return fmt.Sprintf("%s-%03d", devPrefix, i) }

func jetstreamKV(name string) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: name, History: 1, Storage: jetstream.FileStorage}
}

func brokerMsg(topic string, payload []byte) broker.Message {
	return broker.Message{Topic: topic, Payload: payload}
}

// retainedNotices lists retained notices (in-memory broker only).
func (e *testEnv) retainedNotices() []string {
	if e.hub == nil {
		return nil
	}
	var out []string
	for _, t := range e.hub.Retained() {
		if strings.HasSuffix(t, ".notice") {
			out = append(out, t)
		}
	}
	return out
}

var brokerChunkReq = broker.PublishOptions{Family: broker.FamilyChunkRequest}

func testLogger() *slog.Logger {
	if os.Getenv("FIRMCAST_TEST_LOG") != "" { // debug logs of the publishers under test, to stderr
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// open creates a publisher without running it (the test drives it).
func (e *testEnv) open(edit func(*Config)) *Publisher {
	e.t.Helper()
	cfg := e.cfg
	if edit != nil {
		edit(&cfg)
	}
	cfg.Transport = e.dial("pub-"+cfg.Instance, true)
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	p, err := New(ctx, cfg)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	return p
}

// awaitTicks waits until p has completed n more ticks of its loop.
func awaitTicks(t testing.TB, p *Publisher, n int64) {
	t.Helper()
	want := counterValue(p.met.ticks) + float64(n)
	p.kick()
	waitFor(t, 10*time.Second, func() string { return "ticks" }, func() bool {
		p.kick()
		return counterValue(p.met.ticks) >= want
	})
}
