package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"
	"time"

	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// signingEnv starts a publisher that signs manifests (SUITSigner) with a
// new key of alg ("es256" or "ed25519"), for vendor ID 16 bytes of 1 and
// class ID 16 bytes of 2; tune, if not nil, edits the configuration
// after that. It returns the environment, the publisher, the signer and
// the trust anchors that verify its manifests.
func signingEnv(t *testing.T, alg string, tune func(*Config)) (*testEnv, *Publisher, suit.Signer, suit.TrustAnchors) {
	t.Helper()
	key, err := suit.GenerateKey(alg, nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := suit.NewKeySigner(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	p, _ := e.start(func(c *Config) {
		c.Signer = SUITSigner(signer)
		c.VendorID = bytes.Repeat([]byte{1}, 16)
		c.ClassID = bytes.Repeat([]byte{2}, 16)
		if tune != nil {
			tune(c)
		}
	})
	return e, p, signer, suit.TrustAnchors{key.Public()}
}

// A campaign created without an envelope gets one signed by the server:
// it verifies with the server's public key and names the image, its size,
// the chunk size and the chunk table digest a device checks chunks with.
func TestServerSignedManifest(t *testing.T) {
	e, p, signer, trust := signingEnv(t, "es256", func(c *Config) { c.PublicURL = "https://fw.example" })
	ctx := context.Background()
	digest := setupFleet(t, e, p, 3)
	deadline := e.clock.Now().Add(48 * time.Hour).Unix()
	c, err := p.CreateCampaign(ctx, e.who(p), schemas.CampaignSpec{Image: digest, Class: "sensor", Deadline: deadline})
	if err != nil {
		t.Fatalf("CreateCampaign: %v", err)
	}
	m, err := suit.Verify(c.Envelope, trust)
	if err != nil {
		t.Fatalf("server-signed envelope does not verify: %v", err)
	}
	img, _ := p.Image(ctx, hex.EncodeToString(digest))
	d, ok := m.ImageDigest()
	size, _ := m.ImageSize()
	ci, cok := m.ChunkInfo()
	if !ok || !bytes.Equal(d.Bytes, digest) || size != uint64(img.Size) || !cok || ci.ChunkSize != img.ChunkSize || hex.EncodeToString(ci.TableDigest.Bytes) != img.TableDigest {
		t.Fatalf("manifest names digest %x size %d chunk %+v; image is %+v", d.Bytes, size, ci, img)
	}
	if ub, ok := m.UseBefore(); !ok || int64(ub) != deadline {
		t.Errorf("use-before %d (%v), want the deadline %d", ub, ok, deadline)
	}
	if uris := m.URIs(); len(uris) != 1 || uris[0] != "https://fw.example/images/"+img.Digest {
		t.Errorf("URIs %v", uris)
	}
	// The stored chunk table is the one the manifest signs.
	data, err := p.loadImage(ctx, img.Digest)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := schemas.Encode(data.table)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := m.ImageDigest()
	msize, _ := m.ImageSize()
	mci, _ := m.ChunkInfo()
	if _, err := fetcher.DecodeTable(fetcher.Image{Digest: md.Bytes, Size: msize, ChunkSize: mci.ChunkSize, TableDigest: mci.TableDigest.Bytes}, tb); err != nil {
		t.Errorf("stored chunk table vs manifest: %v", err)
	}
	// Without vendor and class ids the server refuses to sign.
	_, err = SUITSigner(signer).SignManifest(ctx, ManifestRequest{ImageDigest: digest})
	if err == nil {
		t.Error("signed without vendor and class ids")
	}
}
