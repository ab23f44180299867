package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Rollback by re-signing, as an API client with a campaign key would try
// it: once devices confirmed v2.0.0, a campaign to v1.0.0 signed afresh by
// the server (a sequence number every device accepts) is refused unless
// it says allow_downgrade, which is audited; the same holds for an image
// whose security version is lower than the running one's. The server
// signs each image's security version into its manifests.
func TestRollbackByResigningNeedsAllowDowngrade(t *testing.T) {
	e, p, _, _ := signingEnv(t, "es256", nil)
	ctx := context.Background()
	admin := e.who(p)
	tok, _, err := p.CreateAPIKey(ctx, admin, "ci", []Scope{ScopeCampaign})
	if err != nil {
		t.Fatal(err)
	}
	who, err := p.Authenticate(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	upload := func(version string, sv uint64) []byte {
		t.Helper()
		img, _, err := p.UploadImageWith(ctx, who, ImageUpload{Name: "fw-" + version, Version: version, SecurityVersion: sv}, bytes.NewReader(randomImage(t, 3000)))
		if err != nil {
			t.Fatal(err)
		}
		d, _ := hex.DecodeString(img.Digest)
		return d
	}
	v1, v2, v3 := upload("1.0.0", 0), upload("v2.0.0", 0), upload("2.1.0", 2)
	f := newFleet(e)
	var ids []string
	for i := range 3 {
		if _, _, err := p.AddDevice(ctx, admin, NewDevice{ID: devName(i), Class: "sensor"}); err != nil {
			t.Fatal(err)
		}
		f.add(devName(i), false, false)
		ids = append(ids, devName(i))
	}
	rollout := func(img []byte) {
		t.Helper()
		c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: img, Devices: ids, Start: true})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, func() string { return fmt.Sprint(statusOf_(t, p, c.ID)) }, func() bool {
			return statusOf_(t, p, c.ID).State == CampaignCompleted
		})
		waitFor(t, 10*time.Second, func() string { return "registry records the running image" }, func() bool {
			d, err := p.Device(ctx, ids[0])
			return err == nil && d.Image == hex.EncodeToString(img)
		})
	}
	rollout(v2)

	refused := func(img []byte, want string) {
		t.Helper()
		_, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: img, Devices: ids})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "downgrade 3 target") || !strings.Contains(err.Error(), want) {
			t.Errorf("campaign to an older image: %v, want ErrInvalid naming the downgrade (%q)", err, want)
		}
	}
	refused(v1, "runs v2.0.0, the image is v1.0.0")
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: v1, Devices: ids, AllowDowngrade: true})
	if err != nil {
		t.Fatalf("with allow_downgrade: %v", err)
	}
	entries, err := p.Audit(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	audited := false
	for _, en := range entries {
		if en.Action == "campaign.downgrade" && en.Target == c.ID && en.KeyID == who.KeyID && strings.Contains(en.Detail, "3 target") {
			audited = true
		}
	}
	if !audited {
		t.Errorf("the allowed downgrade is not in the audit log: %+v", entries)
	}
	if _, err := p.AbortCampaign(ctx, who, c.ID); err != nil {
		t.Fatal(err)
	}

	// Security versions: v3 raises it to 2; v2 (none) is then a downgrade
	// although its version is older only by minor.
	rollout(v3)
	var c3 Campaign
	for _, id := range p.idx.campaignIDs() {
		if cc, ok := p.idx.campaign(id); ok && cc.Image == hex.EncodeToString(v3) {
			c3 = cc
		}
	}
	m, err := suit.Decode(c3.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if sv, ok, err := m.SecurityVersion(); err != nil || !ok || sv != 2 {
		t.Errorf("server-signed manifest of a security-version-2 image: %d, %v, %v", sv, ok, err)
	}
	refused(v2, "runs v2.1.0, the image is v2.0.0")
	v4 := upload("3.0.0", 0) // newer by version, lower by security version
	refused(v4, "runs security version 2, the image has 0")
}

// Image versions are semantic versions; a stored image's metadata never
// changes.
func TestImageVersionMetadata(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	who := e.who(p)
	data := randomImage(t, 2000)
	for _, bad := range []ImageUpload{{Version: "one"}, {Version: "1.2.3.4"}, {SecurityVersion: suit.MaxSecurityVersion + 1}} {
		if _, _, err := p.UploadImageWith(ctx, who, bad, bytes.NewReader(data)); !errors.Is(err, ErrInvalid) {
			t.Errorf("upload %+v: %v, want ErrInvalid", bad, err)
		}
	}
	img, created, err := p.UploadImageWith(ctx, who, ImageUpload{Version: "1.2.3-rc.1", SecurityVersion: 4}, bytes.NewReader(data))
	if err != nil || !created || img.Version != "v1.2.3-rc.1" || img.SecurityVersion != 4 {
		t.Fatalf("upload: %+v, %v, %v", img, created, err)
	}
	if _, created, err := p.UploadImageWith(ctx, who, ImageUpload{}, bytes.NewReader(data)); err != nil || created {
		t.Errorf("upload again without metadata: created %v, %v", created, err)
	}
	if _, _, err := p.UploadImageWith(ctx, who, ImageUpload{Version: "1.2.4"}, bytes.NewReader(data)); !errors.Is(err, ErrState) {
		t.Errorf("upload again with another version: %v, want ErrState", err)
	}
}
