package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// apiNopTransport accepts every publish and delivers nothing: the CLI tests
// exercise the API only.
type apiNopTransport struct{}

func (apiNopTransport) Publish(context.Context, schemas.Topic, []byte, broker.PublishOptions) error {
	return nil
}
func (apiNopTransport) Subscribe(context.Context, schemas.Topic, broker.Handler, broker.SubscribeOptions) (broker.Subscription, error) {
	return nil, broker.ErrClosed
}
func (apiNopTransport) Request(context.Context, schemas.Topic, []byte) ([]byte, error) {
	return nil, broker.ErrClosed
}
func (apiNopTransport) Reply(context.Context, broker.Message, []byte) error { return nil }
func (apiNopTransport) Dialect() broker.Dialect                             { return broker.DialectMQTT }
func (apiNopTransport) ReceiveQueue() int                                   { return 0 }
func (apiNopTransport) Close(context.Context) error                         { return nil }

// apiStartServer starts a publisher on an in-process NATS server (its
// transport apiNopTransport) behind an HTTP test server and returns the
// server's URL; tune, if given, changes the publisher's configuration
// first. The admin key is cli-admin-0123456789abcdef01.
func apiStartServer(t *testing.T, tune ...func(*publisher.Config)) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithCancel(context.Background())
	nk, err := suit.GenerateKey("ed25519", nil)
	if err != nil {
		t.Fatal(err)
	}
	ns1, err := suit.NewKeySigner(nk, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := publisher.Config{JetStream: js, Transport: apiNopTransport{}, BootstrapKey: "cli-admin-0123456789abcdef01", ChunkSize: 1024,
		NoticeSigners: []suit.Signer{ns1}}
	for _, f := range tune {
		f(&cfg)
	}
	p, err := publisher.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(func() {
		srv.Close()
		cancel()
		nc.Close()
		ns.Shutdown()
	})
	return srv.URL
}

func TestAPICommands(t *testing.T) {
	url := apiStartServer(t)
	t.Setenv("FIRMCAST_SERVER", url)
	t.Setenv("FIRMCAST_API_KEY", "cli-admin-0123456789abcdef01")
	img := filepath.Join(t.TempDir(), "fw.bin")
	data := make([]byte, 4000)
	rand.Read(data)
	os.WriteFile(img, data, 0o600)

	must := func(args ...string) string { t.Helper(); return mustFirmcast(t, args...) }
	must("device", "add", "d1", "--class", "sensor", "--group", "lab")
	must("device", "add", "d2", "--class", "sensor")
	must("group", "add", "lab", "d2")
	if out := must("device", "list"); !strings.Contains(out, "d1") || !strings.Contains(out, "lab") {
		t.Errorf("device list:\n%s", out)
	}
	out := must("image", "upload", img)
	digest := regexp.MustCompile(`^[0-9a-f]{64}`).FindString(out)
	if digest == "" {
		t.Fatalf("image upload printed %q", out)
	}
	if out := must("image", "list"); !strings.Contains(out, digest) {
		t.Errorf("image list:\n%s", out)
	}
	img2 := filepath.Join(t.TempDir(), "fw2.bin")
	os.WriteFile(img2, append([]byte("v2"), data...), 0o600)
	if out := must("image", "upload", img2, "--version", "1.4.2", "--security-version", "3"); !strings.Contains(out, "version v1.4.2, security version 3") {
		t.Errorf("image upload with versions:\n%s", out)
	}
	env := filepath.Join(t.TempDir(), "fw.suit")
	os.WriteFile(env, apiTestEnvelope(t, data), 0o600)
	out = must("campaign", "create", "--image", digest, "--group", "lab", "--phases", "50,100", "--fail-threshold", "5%", "--envelope", env, "--start")
	id := regexp.MustCompile(`campaign (c-[0-9a-f]+)`).FindStringSubmatch(out)
	if id == nil || !strings.Contains(out, "running") {
		t.Fatalf("campaign create:\n%s", out)
	}
	if out := must("campaign", "status", id[1]); !strings.Contains(out, "running") {
		t.Errorf("status:\n%s", out)
	}
	must("campaign", "pause", id[1])
	if out := must("campaign", "list"); !strings.Contains(out, "paused") {
		t.Errorf("list:\n%s", out)
	}
	must("campaign", "abort", id[1])
	if out := must("campaign", "create", "--image", digest, "--envelope", env, "--phase-devices", "d1", "--phase-devices", "d2", "--allow-downgrade"); !strings.Contains(out, "phases   [50 100]") {
		t.Errorf("explicit phases:\n%s", out)
	}
	if out := must("campaign", "watch", id[1]); !strings.Contains(out, "aborted") || !strings.Contains(out, "pending") {
		t.Errorf("watch of an ended campaign:\n%s", out)
	}
	if out := must("campaign", "devices", id[1], "--state", "failed"); !strings.Contains(out, "0 of 0 matching devices") {
		t.Errorf("campaign devices:\n%s", out)
	}
	if out := must("campaign", "failures", id[1]); !strings.Contains(out, "no failures") {
		t.Errorf("campaign failures:\n%s", out)
	}
	if out := must("fleet"); !strings.Contains(out, "2 devices") || !strings.Contains(out, "lab=2") || !strings.Contains(out, "aborted=1") {
		t.Errorf("fleet:\n%s", out)
	}
	if out := must("device", "history", "d1"); !strings.Contains(out, "WHEN") {
		t.Errorf("device history:\n%s", out)
	}
	if _, err := runFirmcast(t, "image", "delete", digest); err == nil || !strings.Contains(err.Error(), "delivered by campaign") {
		t.Errorf("delete of an image a created campaign delivers: %v", err)
	}
	if _, err := runFirmcast(t, "campaign", "resume", id[1]); err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Errorf("resume of aborted: %v", err)
	}
	out = must("apikey", "create", "--name", "ci", "--scope", "read")
	tok := regexp.MustCompile(`token: (\S+)`).FindStringSubmatch(out)
	kid := regexp.MustCompile(`key ([0-9a-f]+)`).FindStringSubmatch(out)
	if tok == nil || kid == nil {
		t.Fatalf("apikey create:\n%s", out)
	}
	if _, err := runFirmcast(t, "device", "add", "d3", "--class", "x", "--api-key", tok[1]); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("read key adding a device: %v", err)
	}
	must("apikey", "revoke", kid[1])
	if _, err := runFirmcast(t, "device", "list", "--api-key", tok[1]); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked key: %v", err)
	}
	if out := must("device", "show", "d1"); !strings.Contains(out, "sensor") {
		t.Errorf("device show:\n%s", out)
	}
	must("device", "remove", "d2")
	if out := must("audit"); !strings.Contains(out, "campaign.abort") || !strings.Contains(out, "apikey.revoke") {
		t.Errorf("audit:\n%s", out)
	}
	if _, err := runFirmcast(t, "campaign", "create", "--image", digest, "--group", "lab", "--fail-threshold", "five"); err == nil {
		t.Error("bad --fail-threshold accepted")
	}
}

// apiTestEnvelope signs a SUIT envelope for image with a fresh key.
func apiTestEnvelope(t *testing.T, image []byte) []byte {
	t.Helper()
	k, err := suit.GenerateKey("es256", nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := suit.NewKeySigner(k, suit.ES256)
	if err != nil {
		t.Fatal(err)
	}
	env, err := suit.Create(context.Background(), suit.CreateOptions{
		Image: bytes.NewReader(image), VendorID: make([]byte, 16), ClassID: make([]byte, 16), Seq: 1, ChunkSize: 1024,
	}, s)
	if err != nil {
		t.Fatal(err)
	}
	return env
}
