package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// serve runs the publisher beside the brokers: a device registered with
// `firmcast device add` authenticates on the embedded MQTT broker with its
// secret, and a campaign started from the CLI reaches it as a notice.
func TestServeRunsPublisher(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	os.WriteFile(creds, []byte("backend backend bsecret\n"), 0o600)
	root := testutil.UniqueRoot(t)
	type urls struct{ mqtt, nats, http string }
	ready := make(chan urls, 1)
	// The server's key signs the campaign's notices (the campaign
	// authority); the firmware is signed by another key (the envelope).
	key, err := suit.GenerateKey("ed25519", nil)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := suit.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "server.pem"), keyPEM, 0o600)
	o := &serveOptions{
		mqttListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: filepath.Join(dir, "data"), root: root, credentials: creds,
		// --notice-key alone: the server signs notices, never firmware.
		pub:     publisherOptions{httpListen: "127.0.0.1:0", apiKey: "serve-admin-0123456789abcdef", noticeKey: filepath.Join(dir, "server.pem")},
		onReady: func(m, n, h string) { ready <- urls{m, n, h} },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, o) }()
	t.Cleanup(func() { cancel(); <-done })
	var u urls
	select {
	case u = <-ready:
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("serve exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve not ready")
	}
	t.Setenv("FIRMCAST_SERVER", u.http)
	t.Setenv("FIRMCAST_API_KEY", "serve-admin-0123456789abcdef")
	must := func(args ...string) string { t.Helper(); return mustFirmcast(t, args...) }
	must("device", "add", "dev-9", "--class", "sensor", "--secret", "devsecret9-0123456789abcdef0123")
	topics := schemas.MustTopics(root)
	dial := func(secret string) (broker.Transport, error) {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		return broker.Dial(dctx, broker.Config{URL: u.mqtt, Topics: topics, ClientID: "dev-9", Username: "dev-9", Password: secret})
	}
	if _, err := dial("wrong-secret"); !errors.Is(err, broker.ErrNotAuthorized) {
		t.Fatalf("wrong secret: %v, want ErrNotAuthorized", err)
	}
	dev, err := dial("devsecret9-0123456789abcdef0123")
	if err != nil {
		t.Fatalf("registered device refused: %v", err)
	}
	defer dev.Close(context.Background())
	notices := make(chan schemas.UpdateNotice, 4)
	nt, _ := topics.Notice("dev-9")
	if _, err := dev.Subscribe(ctx, nt, func(_ context.Context, m broker.Message) {
		var n schemas.UpdateNotice
		if len(m.Payload) > 0 && schemas.Decode(m.Payload, &n) == nil {
			notices <- n
		}
	}, broker.SubscribeOptions{Family: broker.FamilyNotice, Retained: true}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "fw.bin")
	data := make([]byte, 3000)
	rand.Read(data)
	os.WriteFile(img, data, 0o600)
	env := filepath.Join(dir, "fw.suit")
	envBytes := apiTestEnvelope(t, data)
	os.WriteFile(env, envBytes, 0o600)
	out := must("campaign", "create", "--image", img, "--device", "dev-9", "--envelope", env, "--start")
	id := regexp.MustCompile(`campaign (c-[0-9a-f]+)`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("campaign create:\n%s", out)
	}
	select {
	case n := <-notices:
		if n.Campaign != id[1] || n.Target != "dev-9" || !bytes.Equal(n.Envelope, envBytes) {
			t.Fatalf("notice %+v", n)
		}
		if _, err := suit.VerifyNotice(&n, suit.TrustAnchors{key.Public()}); err != nil {
			t.Fatalf("notice not signed by the server's key: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no notice reached the device over MQTT")
	}
	must("campaign", "abort", id[1])
}
