package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestUpdateEndToEnd runs `firmcast update` against a running `firmcast
// serve` (embedded brokers, the server signing manifests) with a fleet of
// simulated devices registered through its API: a target that is not
// registered is refused before anything is uploaded; then the update
// reaches the devices it names, and only them, which confirm the image.
func TestUpdateEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	key := testutil.SigningKey(t, "es256")
	keyPEM, err := suit.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	signKey := filepath.Join(dir, "sign.pem")
	if err := os.WriteFile(signKey, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	// serve logs to the default logger it finds at start: give it its
	// own, so that the commands run below (each sets the default logger
	// to its own output) do not share a buffer with it.
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })
	const apiKey = "update-admin-0123456789abcdef"
	root := "fcupd" + randomSuffix(t)
	type urls struct{ mqtt, http string }
	ready := make(chan urls, 1)
	o := &serveOptions{
		mqttListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: filepath.Join(dir, "data"), root: root,
		pub: publisherOptions{httpListen: "127.0.0.1:0", apiKey: apiKey, signKey: signKey, vendorID: vendorUUID, classID: classUUID,
			imageAccess: "key"},
		onReady: func(m, _, h string) { ready <- urls{m, h} },
	}
	sctx, scancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runServe(sctx, o) }()
	t.Cleanup(func() { scancel(); <-done })
	var u urls
	select {
	case u = <-ready:
	case err := <-done:
		done <- err
		t.Fatalf("serve exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve not ready")
	}
	t.Setenv("FIRMCAST_API_KEY", apiKey)
	cl := &publisher.Client{BaseURL: u.http, Key: apiKey}

	vendor, _ := parseUUID(vendorUUID)
	class, _ := parseUUID(classUUID)
	v1, v2 := fleet.Image(5, "v1", 48<<10), fleet.Image(5, "v2", 48<<10)
	fl, err := fleet.StartFleet(ctx, fleet.FleetConfig{
		Devices: 3, Prefix: "upd", Class: "sensor", Dir: filepath.Join(dir, "devices"), MQTTURL: u.mqtt, Topics: schemas.MustTopics(root),
		VendorID: vendor, ClassID: class, Trust: suit.TrustAnchors{key.Public()}, Factory: v1, MaxImage: len(v2),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MemFlash: true,
		Register: func(ctx context.Context, id, secret string) error {
			_, err := cl.AddDevice(ctx, publisher.NewDevice{ID: id, Class: "sensor", Secret: secret})
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	defer fl.Stop()
	img := filepath.Join(dir, "v2.bin")
	if err := os.WriteFile(img, v2, 0o644); err != nil {
		t.Fatal(err)
	}
	d2 := sha256.Sum256(v2)

	// A target that is not registered: refused, nothing uploaded.
	_, err = runFirmcast(t, "update", "--server", u.http, "--image", img, "--device", "upd-0001", "--device", "nope")
	if err == nil || !strings.Contains(err.Error(), "not registered: nope") || !strings.Contains(err.Error(), "nothing was uploaded") {
		t.Fatalf("update to an unknown device: %v", err)
	}
	if _, err := cl.Image(ctx, hex.EncodeToString(d2[:])); err == nil {
		t.Fatal("the image was uploaded although a target does not exist")
	}
	if _, err = runFirmcast(t, "update", "--server", u.http, "--image", img, "--class", "no-such-class"); err == nil ||
		!strings.Contains(err.Error(), "no registered device matches") {
		t.Fatalf("update to an empty class: %v", err)
	}

	// The update: two of the three devices.
	out, err := runFirmcast(t, "update", "--server", u.http, "--image", img, "--device", "upd-0001", "--device", "upd-0002")
	if err != nil {
		t.Fatalf("update: %v\n%s", err, out)
	}
	want := hex.EncodeToString(d2[:])
	deadline := time.Now().Add(30 * time.Second)
	for {
		devs, err := cl.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, d := range devs {
			got[d.ID] = d.Image
		}
		if got["upd-0001"] == want && got["upd-0002"] == want {
			if got["upd-0003"] == want {
				t.Fatal("a device the update did not name got the image")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("devices run %v, want %s on upd-0001 and upd-0002", got, want)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
