package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestMakeDelta: the server makes a delta between two stored images once
// (stored as an image of its own, with its chunk table), refuses what is
// not a pair of images, and a campaign it signs offers the delta to the
// image a target reports running, before the full image.
func TestMakeDelta(t *testing.T) {
	e, p, signer, trust := signingEnv(t, "ed25519", nil)
	ctx := context.Background()
	who := e.who(p)
	v1 := randomImage(t, 40000)
	v2 := bytes.Clone(v1)
	copy(v2[20000:], []byte("a small change"))
	up := func(b []byte) Image {
		t.Helper()
		img, _, err := p.UploadImage(ctx, who, "fw", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	i1, i2 := up(v1), up(v2)
	d, created, err := p.MakeDelta(ctx, who, i1.Digest, i2.Digest)
	if err != nil || !created {
		t.Fatalf("MakeDelta: %v (created %v)", err, created)
	}
	if d.DeltaFrom != i1.Digest || d.DeltaTo != i2.Digest || d.Size*10 > i2.Size || d.Chunks == 0 || d.TableDigest == "" {
		t.Fatalf("delta %+v", d)
	}
	again, created, err := p.MakeDelta(ctx, who, i1.Digest, i2.Digest)
	if err != nil || created || again.Digest != d.Digest {
		t.Fatalf("making it again: %+v, created %v, %v", again, created, err)
	}
	for _, tc := range []struct {
		name     string
		from, to string
		want     error
	}{
		{"same image", i1.Digest, i1.Digest, ErrInvalid},
		{"from a delta", d.Digest, i2.Digest, ErrInvalid},
		{"unknown source", hex.EncodeToString(bytes.Repeat([]byte{9}, 32)), i2.Digest, ErrNotFound},
		{"not a digest", "v1", i2.Digest, ErrInvalid},
	} {
		if _, _, err := p.MakeDelta(ctx, who, tc.from, tc.to); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	// A device reports running v1: the campaign to v2 offers the delta.
	if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: devName(1), Class: "sensor"}); err != nil {
		t.Fatal(err)
	}
	d1, _ := hex.DecodeString(i1.Digest)
	if _, err := p.applyReport(ctx, &schemas.DeviceReport{V: schemas.Version, Device: devName(1), State: schemas.StateIdle,
		ActiveVersion: 1, ActiveDigest: d1, Counter: 1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	dev, err := p.Device(ctx, devName(1))
	if err != nil || dev.Image != i1.Digest {
		t.Fatalf("registry: %+v, %v; want the reported image", dev, err)
	}
	d2, _ := hex.DecodeString(i2.Digest)
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: d2, Devices: []string{devName(1)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Deltas) != 1 || c.Deltas[0] != d.Digest {
		t.Fatalf("campaign deltas %v, want [%s]", c.Deltas, d.Digest)
	}
	m, err := suit.Verify(c.Envelope, trust)
	if err != nil {
		t.Fatal(err)
	}
	offers, err := m.Deltas()
	if err != nil || len(offers) != 1 {
		t.Fatalf("offers %+v, %v", offers, err)
	}
	o := offers[0]
	if !bytes.Equal(o.SourceDigest, d1) || o.SourceSize != uint64(len(v1)) || hex.EncodeToString(o.Digest) != d.Digest ||
		o.Size != uint64(d.Size) || hex.EncodeToString(o.ChunkTableDigest) != d.TableDigest || o.ChunkSize != d.ChunkSize {
		t.Fatalf("offer %+v does not describe delta %+v", o, d)
	}
	// An envelope signed offline that offers the delta: the campaign
	// serves it; one offering a delta that is not stored is refused.
	signed := func(di suit.DeltaInfo) []byte {
		env, err := suit.Create(ctx, suit.CreateOptions{Image: bytes.NewReader(v2), VendorID: bytes.Repeat([]byte{1}, 16),
			ClassID: bytes.Repeat([]byte{2}, 16), Seq: 9, ChunkSize: i2.ChunkSize, Deltas: []suit.DeltaInfo{di}}, signer)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	c, err = p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: d2, Devices: []string{devName(1)}, Envelope: signed(o)})
	if err != nil || len(c.Deltas) != 1 || c.Deltas[0] != d.Digest {
		t.Fatalf("campaign of an envelope offering the delta: %v, %v", c.Deltas, err)
	}
	unknown := o
	unknown.Digest = bytes.Repeat([]byte{5}, 32)
	if _, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: d2, Devices: []string{devName(1)}, Envelope: signed(unknown)}); !errors.Is(err, ErrInvalid) ||
		!strings.Contains(err.Error(), "not stored") {
		t.Fatalf("an envelope offering a delta not stored: %v", err)
	}
	// A campaign to a boot stage: its manifest names the component, and
	// offers no delta (devices report the application's image).
	c, err = p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: d2, Devices: []string{devName(1)}, Component: "bootloader"})
	if err != nil || len(c.Deltas) != 0 {
		t.Fatalf("stage campaign: %v, %v", c.Deltas, err)
	}
	if m, err := suit.Decode(c.Envelope); err != nil || len(m.Components) != 1 || m.Components[0].String() != (suit.ComponentID{[]byte("bootloader")}).String() {
		t.Fatalf("stage campaign's manifest components: %v, %v", m.Components, err)
	}
	// Without deltas (Config.DeltaSources < 0) the campaign offers none.
	p.cfg.DeltaSources = -1
	c, err = p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: d2, Devices: []string{devName(1)}})
	if err != nil || len(c.Deltas) != 0 {
		t.Fatalf("campaign with deltas off: %v, %v", c.Deltas, err)
	}
}

// An image a delta is based on (its source or target) is not deleted
// while the delta exists; once the delta is deleted, it is.
func TestDeleteImageKeepsDeltaBases(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	who := e.who(p)
	v1 := randomImage(t, 40000)
	v2 := bytes.Clone(v1)
	copy(v2[100:], []byte("another small change"))
	var imgs []Image
	for _, b := range [][]byte{v1, v2} {
		img, _, err := p.UploadImage(ctx, who, "fw", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	d, _, err := p.MakeDelta(ctx, who, imgs[0].Digest, imgs[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		if err := p.DeleteImage(ctx, who, img.Digest); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), d.Digest) {
			t.Errorf("delete of %s, a base of delta %s: %v, want ErrState naming the delta", img.Digest, d.Digest, err)
		}
	}
	if err := p.DeleteImage(ctx, who, d.Digest); err != nil {
		t.Fatalf("delete of the delta: %v", err)
	}
	for _, img := range imgs {
		if err := p.DeleteImage(ctx, who, img.Digest); err != nil {
			t.Errorf("delete of %s once the delta is gone: %v", img.Digest, err)
		}
	}
}

// The delta index names the deltas based on an image, and only those:
// among other images and deltas, deleting an image no delta is based on
// goes ahead, and an index key whose delta has no record (a failed
// creation) blocks nothing. Deltas stored before the index existed are
// indexed when a publisher starts (migrateDeltaIndex), so that deleting
// their bases is still refused.
func TestDeltaIndex(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	who := e.who(p)
	base := randomImage(t, 20000)
	var imgs []Image
	for i := range 5 {
		b := bytes.Clone(base)
		copy(b[1000*i:], fmt.Sprintf("change %d", i))
		img, _, err := p.UploadImage(ctx, who, "fw", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	d01, _, err := p.MakeDelta(ctx, who, imgs[0].Digest, imgs[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	d21, _, err := p.MakeDelta(ctx, who, imgs[2].Digest, imgs[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	digests := func(imgs []Image) []string {
		var out []string
		for _, im := range imgs {
			out = append(out, im.Digest)
		}
		slices.Sort(out)
		return out
	}
	for _, c := range []struct {
		base Image
		want []string
	}{
		{imgs[0], []string{d01.Digest}},
		{imgs[1], digests([]Image{d01, d21})},
		{imgs[2], []string{d21.Digest}},
		{imgs[3], nil},
		{d01, nil},
	} {
		got, err := p.deltasOf(ctx, c.base.Digest)
		if err != nil || !slices.Equal(digests(got), c.want) {
			t.Errorf("deltas of %.12s: %v, %v; want %v", c.base.Digest, digests(got), err, c.want)
		}
	}
	// A key without a record: a delta whose creation failed after the
	// index write.
	ghost := strings.Repeat("ab", 32)
	if _, err := p.st.deltas.Put(ctx, imgs[3].Digest+"."+ghost, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteImage(ctx, who, imgs[3].Digest); err != nil {
		t.Errorf("delete of an image no stored delta is based on: %v", err)
	}

	// Deltas stored before the index: the index is empty and unmarked.
	keys, err := p.st.deltas.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := p.st.deltas.Purge(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := p.deltasOf(ctx, imgs[0].Digest); err != nil || len(got) != 0 {
		t.Fatalf("deltas of %.12s with the index emptied: %v, %v", imgs[0].Digest, digests(got), err)
	}
	if err := p.migrateDeltaIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs[:3] {
		if err := p.DeleteImage(ctx, who, img.Digest); !errors.Is(err, ErrState) {
			t.Errorf("delete of %.12s, a base of a delta stored before the index: %v, want ErrState", img.Digest, err)
		}
	}
	// Done once: the marker says so to the publishers that start later.
	if _, err := p.st.deltas.Get(ctx, deltaIndexDone); err != nil {
		t.Errorf("index marker: %v", err)
	}
	// Deleting a delta takes its keys out of the index.
	if err := p.DeleteImage(ctx, who, d01.Digest); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteImage(ctx, who, imgs[0].Digest); err != nil {
		t.Errorf("delete of %.12s once its delta is gone: %v", imgs[0].Digest, err)
	}
	if _, err := p.st.deltas.Get(ctx, imgs[1].Digest+"."+d01.Digest); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("index key of the deleted delta: %v, want not found", err)
	}
}
