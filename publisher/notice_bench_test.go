package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// BenchmarkNotice100 times what a campaign's start costs the publisher
// per device, for a plain and an encrypted image of the same size: the
// signed notices of 100 devices, built one after the other as the
// engine's pacing loop builds them (Publisher.notice: for an encrypted
// image, the content key found and wrapped for the device's own KEK, the
// device's recipiency checked). Each iteration builds the 100 plain and
// the 100 encrypted notices, alternating which goes first; it reports the
// fastest iteration of each per notice and x-plain, the encrypted
// notice's time over the plain one's.
//
//	go test -run '^$' -bench Notice100 -benchtime 20x ./publisher/
func BenchmarkNotice100(b *testing.B) {
	const n = 100
	ctx := context.Background()
	key, err := suit.GenerateKey("ed25519", nil)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := suit.NewKeySigner(key, suit.EdDSA)
	if err != nil {
		b.Fatal(err)
	}
	e := newEnv(b)
	p, _ := e.start(func(c *Config) {
		c.Signer = SUITSigner(signer)
		c.VendorID = bytes.Repeat([]byte{1}, 16)
		c.ClassID = bytes.Repeat([]byte{2}, 16)
		c.KeyCustody = testCustody
	})
	who := e.who(p)
	var ids []string
	for i := range n {
		if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: devName(i), Class: "sensor"}); err != nil {
			b.Fatal(err)
		}
		if _, _, err := p.GenerateDeviceKEK(ctx, who, devName(i)); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, devName(i))
	}
	img := randomImage(b, 64<<10)
	plain, _, err := p.UploadImage(ctx, who, "fw", bytes.NewReader(img))
	if err != nil {
		b.Fatal(err)
	}
	enc, err := p.UploadEncryptedImage(ctx, who, ImageUpload{Name: "fw"}, schemas.CampaignSpec{Devices: ids}, bytes.NewReader(img))
	if err != nil {
		b.Fatal(err)
	}
	campaign := func(digest string) *Campaign {
		d, _ := hex.DecodeString(digest)
		c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: d, Devices: ids})
		if err != nil {
			b.Fatal(err)
		}
		return &c
	}
	cp, ce := campaign(plain.Digest), campaign(enc.Digest)
	round := func(c *Campaign) time.Duration {
		t0 := time.Now()
		for _, id := range ids {
			if _, err := p.notice(ctx, c, id); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0)
	}
	inf := time.Duration(1 << 62)
	pm, em := inf, inf
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			pm = min(pm, round(cp))
			em = min(em, round(ce))
		} else {
			em = min(em, round(ce))
			pm = min(pm, round(cp))
		}
		i++
	}
	b.ReportMetric(float64(pm.Microseconds())/n, "plain-us/notice")
	b.ReportMetric(float64(em.Microseconds())/n, "encrypted-us/notice")
	b.ReportMetric(float64(em)/float64(pm), "x-plain")
}
