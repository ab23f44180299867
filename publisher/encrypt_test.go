package publisher

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

var testCustody = bytes.Repeat([]byte{0xc5}, 16)

// encEnv is a publisher that signs manifests and holds a custody key,
// with devName(0..n-1) registered (class sensor, group all).
func encEnv(t *testing.T, n int) (*testEnv, *Publisher, suit.TrustAnchors) {
	t.Helper()
	key, err := suit.GenerateKey("ed25519", nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := suit.NewKeySigner(key, suit.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	p, _ := e.start(func(c *Config) {
		c.Signer = SUITSigner(signer)
		c.VendorID = bytes.Repeat([]byte{1}, 16)
		c.ClassID = bytes.Repeat([]byte{2}, 16)
		c.KeyCustody = testCustody
	})
	for i := range n {
		if _, _, err := p.AddDevice(context.Background(), e.who(p), NewDevice{ID: devName(i), Class: "sensor", Groups: []string{"all"}}); err != nil {
			t.Fatal(err)
		}
	}
	return e, p, suit.TrustAnchors{key.Public()}
}

// windowsOf returns a finder of any 64-byte window of plain in b.
func holdsPlaintext(b, plain []byte) bool {
	for i := 0; i+64 <= len(plain); i += 64 {
		if bytes.Contains(b, plain[i:i+64]) {
			return true
		}
	}
	// Unaligned windows: every 64-byte window contains a 32-byte block
	// starting at a multiple of 32.
	for i := 0; i+32 <= len(plain); i += 32 {
		if bytes.Contains(b, plain[i:i+32]) {
			return true
		}
	}
	return false
}

// An encrypted upload stores and serves only ciphertext, named by its own
// digest; a campaign's manifest signs the ciphertext with the encryption
// parameter, and each device's notice carries the content key wrapped
// for that device's own key (KEK or ECDH), which decrypts the served
// ciphertext to the plaintext; a device that is not a recipient is
// refused as a target; no API answer carries a device key.
func TestEncryptedImageEndToEnd(t *testing.T) {
	e, p, trust := encEnv(t, 4)
	ctx := context.Background()
	who := e.who(p)
	kek0, _, err := p.GenerateDeviceKEK(ctx, who, devName(0))
	if err != nil {
		t.Fatal(err)
	}
	kek1 := bytes.Repeat([]byte{0x11}, 16)
	if _, err := p.SetDeviceKEK(ctx, who, devName(1), kek1); err != nil {
		t.Fatal(err)
	}
	ec2, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.SetDeviceECDHKey(ctx, who, devName(2), ec2.PublicKey()); err != nil {
		t.Fatal(err)
	}
	// devName(3) has no key: naming it as a recipient is refused.
	plain := randomImage(t, 9000)
	if _, err := p.UploadEncryptedImage(ctx, who, ImageUpload{Name: "x"}, schemas.CampaignSpec{Devices: []string{devName(3)}}, bytes.NewReader(plain)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("recipient without a key: %v, want ErrInvalid", err)
	}
	rs, err := ParseRecipients([]string{"device:" + devName(0) + ",device:" + devName(1), "device:" + devName(2)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.UploadEncryptedImage(ctx, who, ImageUpload{Name: "fw-enc", Version: "2.0.0"}, rs, bytes.NewReader(plain))
	if err != nil {
		t.Fatal(err)
	}
	plainSum := sha256.Sum256(plain)
	if !img.Encrypted || img.Digest == hex.EncodeToString(plainSum[:]) || img.Size != int64(len(plain)) {
		t.Fatalf("image %+v", img)
	}
	// GET /images/{digest} serves ciphertext whose SHA-256 is the name.
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/images/"+img.Digest, nil)
	req.Header.Set("Authorization", "Bearer "+e.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /images: %d %s", resp.StatusCode, ct)
	}
	if cs := sha256.Sum256(ct); hex.EncodeToString(cs[:]) != img.Digest || holdsPlaintext(ct, plain) {
		t.Fatal("GET /images does not serve the ciphertext named by the digest")
	}
	// Not a recipient: refused as a campaign target.
	digest, _ := hex.DecodeString(img.Digest)
	if _, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: digest, Devices: []string{devName(0), devName(3)}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("campaign to a non-recipient: %v, want ErrInvalid", err)
	}
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: digest, Devices: []string{devName(0), devName(1), devName(2)}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(c.Envelope, plainSum[:]) {
		t.Fatal("the manifest holds the plaintext digest")
	}
	m, err := suit.Verify(c.Envelope, trust)
	if err != nil {
		t.Fatal(err)
	}
	enc, ok, err := m.ImageEncryption()
	if !ok || err != nil {
		t.Fatalf("manifest encryption: %v %v", ok, err)
	}
	keys := map[string]suit.KeyUnwrapper{
		devName(0): suit.KEK{KeyID: []byte(devName(0) + "#1"), Key: kek0},
		devName(1): suit.KEK{KeyID: []byte(devName(1) + "#1"), Key: kek1},
		devName(2): suit.ECDHKey{KeyID: []byte(devName(2) + "#1"), Key: ec2},
	}
	var wrapped [][]byte
	for dev, k := range keys {
		nb, err := p.notice(ctx, &c, dev)
		if err != nil {
			t.Fatal(err)
		}
		var n schemas.UpdateNotice
		if err := schemas.Decode(nb, &n); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(n.Image, digest) || len(n.Key) == 0 {
			t.Fatalf("%s: notice names %x with key %d bytes", dev, n.Image, len(n.Key))
		}
		wrapped = append(wrapped, n.Key)
		r, err := suit.DecodeRecipient(n.Key)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := enc.ContentCipher(ctx, k, *r)
		if err != nil {
			t.Fatalf("%s: %v", dev, err)
		}
		got := make([]byte, len(ct))
		_ = cc.XORAt(got, ct, 0)
		if !bytes.Equal(got, plain) {
			t.Fatalf("%s: decrypts to something else", dev)
		}
		// Another device's key does not open this device's wrapped key.
		for other, ok2 := range keys {
			if other != dev {
				if _, err := enc.ContentCipher(ctx, ok2, *r); err == nil {
					t.Errorf("%s's key opens %s's wrapped key", other, dev)
				}
			}
		}
	}
	if bytes.Equal(wrapped[0], wrapped[1]) {
		t.Error("two devices got the same wrapped key")
	}
	// No API answer carries a device key, in any encoding.
	for _, path := range []string{"/api/v1/devices", "/api/v1/devices/" + devName(0), "/api/v1/devices/" + devName(1), "/api/v1/images", "/api/v1/images/" + img.Digest} {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+e.admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
		for _, k := range [][]byte{kek0, kek1, testCustody} {
			for _, enc := range []string{hex.EncodeToString(k), base64.StdEncoding.EncodeToString(k), string(k)} {
				if strings.Contains(string(body), enc) {
					t.Errorf("GET %s answers with a key", path)
				}
			}
		}
		if holdsPlaintext(body, plain) || strings.Contains(string(body), hex.EncodeToString(plainSum[:])) {
			t.Errorf("GET %s answers with plaintext or its digest", path)
		}
	}
}

// Every encrypted upload draws a fresh content key and IV: over many
// uploads (of the same plaintext, too) none repeats, and the same bytes
// make a new ciphertext image each time.
func TestEncryptedUploadsNeverReuseKeyOrIV(t *testing.T) {
	e, p, _ := encEnv(t, 1)
	ctx := context.Background()
	who := e.who(p)
	if _, _, err := p.GenerateDeviceKEK(ctx, who, devName(0)); err != nil {
		t.Fatal(err)
	}
	cust := suit.KEK{KeyID: []byte(EscrowKeyID), Key: testCustody}
	same := randomImage(t, 2000)
	keys, ivs, digests := map[string]bool{}, map[string]bool{}, map[string]bool{}
	const n = 60
	for i := range n {
		plain := same
		if i%2 == 1 {
			plain = randomImage(t, 1500+i)
		}
		img, err := p.UploadEncryptedImage(ctx, who, ImageUpload{}, schemas.CampaignSpec{Devices: []string{devName(0)}}, bytes.NewReader(plain))
		if err != nil {
			t.Fatal(err)
		}
		_, enc, err := p.imageKey(ctx, img.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := enc.ContentCipher(ctx, cust)
		if err != nil {
			t.Fatal(err)
		}
		k, iv := string(cc.Key()), string(enc.Info.IV)
		if keys[k] || ivs[iv] || digests[img.Digest] {
			t.Fatalf("upload %d reused a content key, an IV or a ciphertext", i)
		}
		keys[k], ivs[iv], digests[img.Digest] = true, true, true
	}
}

// Without a custody key the publisher refuses encrypted uploads and
// device keys; a bad custody key size is a configuration error.
func TestEncryptionNeedsCustodyKey(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	if _, _, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: devName(0), Class: "sensor"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.SetDeviceKEK(ctx, e.who(p), devName(0), make([]byte, 16)); !errors.Is(err, ErrNoSigner) {
		t.Errorf("SetDeviceKEK without custody: %v", err)
	}
	if _, err := p.UploadEncryptedImage(ctx, e.who(p), ImageUpload{}, schemas.CampaignSpec{Devices: []string{devName(0)}}, bytes.NewReader([]byte("x"))); !errors.Is(err, ErrNoSigner) {
		t.Errorf("encrypted upload without custody: %v", err)
	}
	cfg := e.cfg
	cfg.KeyCustody = make([]byte, 20)
	cfg.Transport = e.dial("x", true)
	if _, err := New(ctx, cfg); !errors.Is(err, ErrInvalid) {
		t.Errorf("custody key of 20 bytes: %v, want ErrInvalid", err)
	}
	for _, c := range []struct {
		in []string
		ok bool
	}{
		{[]string{"device:a,device:b"}, true}, {[]string{"class:sensor"}, true}, {[]string{"group:g", "device:x"}, true},
		{[]string{"class:a,class:b"}, false}, {[]string{"dev:a"}, false}, {[]string{"device:"}, false}, {[]string{"a"}, false},
	} {
		if _, err := ParseRecipients(c.in); (err == nil) != c.ok {
			t.Errorf("ParseRecipients(%q) = %v, want ok=%v", c.in, err, c.ok)
		}
	}
}

// Over the HTTP API: an admin provisions a generated KEK (answered once,
// never shown again), the key's description carries no key, an
// encrypted upload names its recipients (none: refused), and a read-only
// key may not provision keys.
func TestEncryptionOverHTTPAPI(t *testing.T) {
	e, p, _ := encEnv(t, 2)
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	ctx := context.Background()
	cl := &Client{BaseURL: srv.URL, Key: e.admin}
	rep, err := cl.SetDeviceKey(ctx, devName(0), DeviceKeyRequest{Generate: true})
	if err != nil {
		t.Fatal(err)
	}
	kek, err := hex.DecodeString(rep.KEK)
	if err != nil || len(kek) != 16 || rep.KeyID != devName(0)+"#1" {
		t.Fatalf("generated key reply %+v", rep)
	}
	if _, err := cl.SetDeviceKey(ctx, devName(1), DeviceKeyRequest{KEK: hex.EncodeToString(bytes.Repeat([]byte{3}, 16))}); err != nil {
		t.Fatal(err)
	}
	// Rotation: a second key for devName(1) is generation 2.
	rot, err := cl.SetDeviceKey(ctx, devName(1), DeviceKeyRequest{KEK: hex.EncodeToString(bytes.Repeat([]byte{4}, 16))})
	if err != nil || rot.Generation != 2 || rot.KEK != "" {
		t.Fatalf("rotation: %+v %v", rot, err)
	}
	if _, err := cl.SetDeviceKey(ctx, devName(1), DeviceKeyRequest{KEK: "00", Generate: true}); !errors.Is(err, ErrInvalid) {
		t.Errorf("two key kinds at once: %v, want ErrInvalid", err)
	}
	var info DeviceKeyInfo
	if err := cl.doJSON(ctx, "GET", "/api/v1/devices/"+devName(0)+"/key", nil, &info); err != nil || info.Kind != "kek" {
		t.Fatalf("GET key: %+v %v", info, err)
	}
	plain := randomImage(t, 3000)
	if err := cl.do(ctx, "POST", "/api/v1/images?encrypt=true", bytes.NewReader(plain), "application/octet-stream", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("encrypted upload without recipients: %v, want ErrInvalid", err)
	}
	img, err := cl.UploadImageWith(ctx, ImageUpload{Name: "enc", Recipients: []string{"group:all"}}, bytes.NewReader(plain))
	if err != nil || !img.Encrypted {
		t.Fatalf("encrypted upload: %+v %v", img, err)
	}
	readKey, _, err := p.CreateAPIKey(ctx, e.who(p), "reader", []Scope{ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	ro := &Client{BaseURL: srv.URL, Key: readKey}
	if _, err := ro.SetDeviceKey(ctx, devName(0), DeviceKeyRequest{Generate: true}); err == nil {
		t.Error("a read-only key provisioned a device key")
	}
}

// A device removed and registered again under the same id is another
// device: its key is gone with it, and it is no recipient of the images
// encrypted for the old one (campaign refused) even with a new key.
func TestRemovedDeviceLosesEncryptedImages(t *testing.T) {
	e, p, _ := encEnv(t, 1)
	ctx := context.Background()
	who := e.who(p)
	if _, _, err := p.GenerateDeviceKEK(ctx, who, devName(0)); err != nil {
		t.Fatal(err)
	}
	img, err := p.UploadEncryptedImage(ctx, who, ImageUpload{}, schemas.CampaignSpec{Devices: []string{devName(0)}}, bytes.NewReader(randomImage(t, 3000)))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RemoveDevice(ctx, who, devName(0)); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: devName(0), Class: "sensor"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.DeviceKey(ctx, devName(0)); !errors.Is(err, ErrNotFound) {
		t.Errorf("the removed device's key survived: %v", err)
	}
	if _, _, err := p.GenerateDeviceKEK(ctx, who, devName(0)); err != nil {
		t.Fatal(err)
	}
	digest, _ := hex.DecodeString(img.Digest)
	if _, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: digest, Devices: []string{devName(0)}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("campaign of the old device's image to the new one: %v, want ErrInvalid", err)
	}
}
