package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"testing"
	"time"

	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestStageCampaign: a campaign for the "bootloader" component updates
// the bootloader stage of a fleet of two-stage devices end to end (the
// publisher signs the manifest for the component, the agents install
// into the stage and boot the chain); the application stays as it was.
func TestStageCampaign(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	key := testutil.SigningKey(t, "es256")
	signer, err := suit.NewKeySigner(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	vendor, class := uuidFor("vendor"), uuidFor("class")
	root := "fcstage" + randomHex(4)
	topics := schemas.MustTopics(root)
	st, err := stack.Start(ctx, stack.Config{
		DataDir: filepath.Join(dir, "nats"), Topics: topics, Namespace: root, Logger: testLogger(t), Cleanup: true,
		Publisher: publisher.Config{Signer: publisher.SUITSigner(signer), VendorID: vendor, ClassID: class, ChunkSize: 4096,
			TickInterval: 50 * time.Millisecond, StartWindow: -1, RepairWindow: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	app, bl1, bl2 := Image(4, "app", 40<<10), Image(4, "bl1", 24<<10), Image(4, "bl2", 26<<10)
	fl, err := StartFleet(ctx, FleetConfig{
		Devices: 4, Prefix: "stg", Class: "sensor", Dir: filepath.Join(dir, "devices"), MQTTURL: st.MQTTURL, Topics: topics,
		VendorID: vendor, ClassID: class, Trust: suit.TrustAnchors{key.Public()}, Factory: app, Bootloader: bl1,
		MemFlash: true, Logger: testLogger(t),
		Register: func(ctx context.Context, id, secret string) error {
			return st.RegisterDevice(ctx, id, "sensor", secret)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	defer fl.Stop()
	img, _, err := st.Pub.UploadImage(ctx, st.Admin, "bl2", bytes.NewReader(bl2))
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := hex.DecodeString(img.Digest)
	c, err := st.Pub.CreateCampaign(ctx, st.Admin, schemas.CampaignSpec{Image: digest, Class: "sensor", Component: StageComponent, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	for {
		s, err := st.Pub.CampaignStatus(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.State != publisher.CampaignRunning {
			if s.State != publisher.CampaignCompleted {
				t.Fatalf("campaign %s: %s (%v)", s.State, s.Reason, s.Counts)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("campaign still running: %v", s.Counts)
		case <-time.After(50 * time.Millisecond):
		}
	}
	settle(ctx, fl, 10*time.Second)
	for _, d := range fl.Devices {
		s, err := d.Stage()
		if err != nil || s.Active.Digest != sha256.Sum256(bl2) || s.Trial {
			t.Errorf("%s: bootloader stage %+v (trial %v), %v; want bl2 confirmed", d.ID, s.Active.Header, s.Trial, err)
		}
		a, err := d.Active()
		if err != nil || a.Active.Digest != sha256.Sum256(app) || a.Trial {
			t.Errorf("%s: application %+v, %v; want it unchanged", d.ID, a.Active.Header, err)
		}
	}
}
