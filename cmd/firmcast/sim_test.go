package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestSimAgainstServer runs `firmcast sim` against a separate backend (an
// in-process publisher behind its HTTP API, with embedded brokers whose
// auth hook reads the publisher's registry): devices register through the
// API and a campaign rolls v2 out to all of them.
func TestSimAgainstServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	key, err := suit.GenerateKey("es256", nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := suit.NewKeySigner(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := suit.MarshalPublicKeyPEM(key.Public())
	pubPath := filepath.Join(dir, "trust.pub.pem")
	if err := os.WriteFile(pubPath, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	vendor, _ := parseUUID(vendorUUID)
	class, _ := parseUUID(classUUID)
	topics := testutil.UniqueTopics(t)
	st := stacktest.Start(t, stack.Config{
		DataDir: filepath.Join(dir, "nats"), Topics: topics,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Publisher: publisher.Config{
			Signer: publisher.SUITSigner(signer), VendorID: vendor, ClassID: class, ChunkSize: 4096,
			TickInterval: 50 * time.Millisecond, StartWindow: -1, RepairWindow: 50 * time.Millisecond,
		},
	})
	ts := httptest.NewServer(st.Pub.Handler())
	defer ts.Close()
	img := filepath.Join(dir, "v2.bin")
	if err := os.WriteFile(img, fleet.Image(9, "v2", 40<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runFirmcast(t, "sim", "--server", ts.URL, "--api-key", st.AdminKey, "--broker", st.MQTTURL,
		"--root", topics.Root(), "--trust", pubPath, "--vendor-id", vendorUUID, "--class-id", classUUID,
		"--devices", "6", "--image", img, "--phases", "50,100", "--json", "--dir", filepath.Join(dir, "sim"))
	if err != nil {
		t.Fatalf("sim: %v\n%s", err, out)
	}
	var sum fleet.Summary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if sum.Outcome != "completed" || sum.ConfirmedV2 != 6 || sum.Targeted != 6 {
		t.Fatalf("outcome %s, %d/%d confirmed: %+v", sum.Outcome, sum.ConfirmedV2, sum.Targeted, sum.Problems)
	}
	t.Logf("setup %.1fs wall %.1fs", sum.SetupSeconds, sum.WallSeconds)
	devs, err := st.Pub.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 6 {
		t.Fatalf("%d devices registered through the API, want 6", len(devs))
	}
}
