package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/firmcast/firmcast/delta"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// memWriterAt is an io.WriterAt into a buffer.
type memWriterAt []byte

func (m memWriterAt) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }

// A delta to an encrypted image is stored and served encrypted: named by
// its ciphertext's digest, with neither a 64-byte window of the new
// image's plaintext nor its digest in what GET /images serves; a campaign
// to the image offers it with its key wrapped by the image's DeltaKEK, so
// a device that opens the image (with the wrapped key of its own notice)
// opens the delta, which turns the running v1 into v2. A delta from an
// encrypted image is refused (it would name that image's plaintext
// digest).
func TestEncryptedDelta(t *testing.T) {
	e, p, trust := encEnv(t, 1)
	ctx := context.Background()
	who := e.who(p)
	kek, _, err := p.GenerateDeviceKEK(ctx, who, devName(0))
	if err != nil {
		t.Fatal(err)
	}
	v1 := randomImage(t, 40000)
	v2 := bytes.Clone(v1)
	secret := randomImage(t, 3000) // what v2 adds: not in v1
	copy(v2[20000:], secret)
	i1, _, err := p.UploadImage(ctx, who, "fw", bytes.NewReader(v1))
	if err != nil {
		t.Fatal(err)
	}
	rs := schemas.CampaignSpec{Devices: []string{devName(0)}}
	i2, err := p.UploadEncryptedImage(ctx, who, ImageUpload{Name: "fw"}, rs, bytes.NewReader(v2))
	if err != nil {
		t.Fatal(err)
	}
	d, created, err := p.MakeDelta(ctx, who, i1.Digest, i2.Digest)
	if err != nil || !created {
		t.Fatalf("MakeDelta: %v (created %v)", err, created)
	}
	if !d.Encrypted || d.DeltaFrom != i1.Digest || d.DeltaTo != i2.Digest || d.Size*4 > i2.Size {
		t.Fatalf("delta %+v", d)
	}
	if _, _, err := p.MakeDelta(ctx, who, i2.Digest, i1.Digest); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a delta from an encrypted image: %v, want ErrInvalid", err)
	}
	v2sum := sha256.Sum256(v2)
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/images/"+d.Digest, nil)
	req.Header.Set("Authorization", "Bearer "+e.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if cs := sha256.Sum256(ct); resp.StatusCode != 200 || hex.EncodeToString(cs[:]) != d.Digest {
		t.Fatalf("GET /images/%s: %d, not the ciphertext named by the digest", d.Digest, resp.StatusCode)
	}
	if holdsPlaintext(ct, secret) || bytes.Contains(ct, v2sum[:]) {
		t.Fatal("the served delta holds v2's plaintext or its digest")
	}

	// The device runs v1: the campaign offers the encrypted delta.
	d1, _ := hex.DecodeString(i1.Digest)
	if _, err := p.applyReport(ctx, &schemas.DeviceReport{V: schemas.Version, Device: devName(0), State: schemas.StateIdle,
		ActiveVersion: 1, ActiveDigest: d1, Counter: 1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	d2, _ := hex.DecodeString(i2.Digest)
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: d2, Devices: []string{devName(0)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Deltas) != 1 || c.Deltas[0] != d.Digest {
		t.Fatalf("campaign deltas %v, want [%s]", c.Deltas, d.Digest)
	}
	if bytes.Contains(c.Envelope, v2sum[:]) {
		t.Fatal("the manifest holds v2's plaintext digest")
	}
	m, err := suit.Verify(c.Envelope, trust)
	if err != nil {
		t.Fatal(err)
	}
	offers, err := m.Deltas()
	if err != nil || len(offers) != 1 || offers[0].Encryption == nil {
		t.Fatalf("offers %+v, %v: want one, encrypted", offers, err)
	}
	ienc, _, err := m.ImageEncryption()
	if err != nil {
		t.Fatal(err)
	}
	nb, err := p.notice(ctx, &c, devName(0))
	if err != nil {
		t.Fatal(err)
	}
	var n schemas.UpdateNotice
	if err := schemas.Decode(nb, &n); err != nil {
		t.Fatal(err)
	}
	r, err := suit.DecodeRecipient(n.Key)
	if err != nil {
		t.Fatal(err)
	}
	icc, err := ienc.ContentCipher(ctx, suit.KEK{KeyID: []byte(devName(0) + "#1"), Key: kek}, *r)
	if err != nil {
		t.Fatal(err)
	}
	dcc, err := offers[0].Encryption.DeltaCipher(ctx, icc)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(dcc.Key(), icc.Key()) || bytes.Equal(offers[0].Encryption.Info.IV, ienc.Info.IV) {
		t.Fatal("the delta reuses the image's content key or IV")
	}
	dp := make([]byte, len(ct))
	_ = dcc.XORAt(dp, ct, 0)
	patch, err := delta.Open(bytes.NewReader(dp), int64(len(dp)))
	if err != nil {
		t.Fatal(err)
	}
	out := make(memWriterAt, len(v2))
	res, err := patch.Apply(ctx, bytes.NewReader(v1), out)
	if err != nil || res.Digest != v2sum || !bytes.Equal(out, v2) {
		t.Fatalf("the decrypted delta does not make v2: %v", err)
	}
}

// Every payload, full image or delta, gets a fresh content key and IV:
// over many encrypted images and a delta to each (from the same plain
// source), no key and no IV repeats, among images and deltas alike.
func TestEncryptedPayloadsNeverReuseKeyOrIV(t *testing.T) {
	e, p, _ := encEnv(t, 1)
	ctx := context.Background()
	who := e.who(p)
	if _, _, err := p.GenerateDeviceKEK(ctx, who, devName(0)); err != nil {
		t.Fatal(err)
	}
	cust := suit.KEK{KeyID: []byte(EscrowKeyID), Key: testCustody}
	v1 := randomImage(t, 3000)
	i1, _, err := p.UploadImage(ctx, who, "fw", bytes.NewReader(v1))
	if err != nil {
		t.Fatal(err)
	}
	keys, ivs := map[string]string{}, map[string]string{}
	seen := func(what, digest string) {
		t.Helper()
		_, enc, err := p.imageKey(ctx, digest)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := enc.ContentCipher(ctx, cust)
		if err != nil {
			t.Fatal(err)
		}
		k, iv := string(cc.Key()), string(enc.Info.IV)
		if prev, ok := keys[k]; ok {
			t.Fatalf("%s reuses the content key of %s", what, prev)
		}
		if prev, ok := ivs[iv]; ok {
			t.Fatalf("%s reuses the IV of %s", what, prev)
		}
		keys[k], ivs[iv] = what, what
	}
	const n = 40
	for i := range n {
		v2 := bytes.Clone(v1)
		copy(v2[1000:], []byte{byte(i), byte(i >> 8), 'x'})
		if i%2 == 1 {
			v2 = bytes.Clone(v1) // the same plaintext again: still fresh
			v2[0] ^= 1
		}
		img, err := p.UploadEncryptedImage(ctx, who, ImageUpload{}, schemas.CampaignSpec{Devices: []string{devName(0)}}, bytes.NewReader(v2))
		if err != nil {
			t.Fatal(err)
		}
		seen("image "+img.Digest, img.Digest)
		d, _, err := p.MakeDelta(ctx, who, i1.Digest, img.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Encrypted {
			t.Fatalf("delta %d to an encrypted image is not encrypted", i)
		}
		seen("delta "+d.Digest, d.Digest)
	}
	if len(keys) != 2*n || len(ivs) != 2*n {
		t.Fatalf("%d keys, %d IVs for %d payloads", len(keys), len(ivs), 2*n)
	}
}
