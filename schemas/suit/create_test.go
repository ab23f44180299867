package suit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/firmcast/firmcast/schemas"
)

var (
	testVendor = bytes.Repeat([]byte{0xfa}, 16)
	testClass  = bytes.Repeat([]byte{0x14}, 16)
)

// testImage is a small deterministic image spanning several chunks.
func testImage(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func mustSigner(t testing.TB, alg string, coseAlg Algorithm) (Signer, any) {
	t.Helper()
	k, err := GenerateKey(alg, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewKeySigner(k, coseAlg)
	if err != nil {
		t.Fatal(err)
	}
	return s, k.Public()
}

func TestCreateVerifyRoundTrip(t *testing.T) {
	img := testImage(40000)
	hmacKey := HMACKey(bytes.Repeat([]byte{7}, 32))
	hs, err := NewHMACSigner(hmacKey)
	if err != nil {
		t.Fatal(err)
	}
	es, epub := mustSigner(t, "es256", ES256)
	esp, esppub := mustSigner(t, "es256", ESP256)
	ed, edpub := mustSigner(t, "ed25519", EdDSA)
	ed19, ed19pub := mustSigner(t, "ed25519", Ed25519)
	for _, tc := range []struct {
		name   string
		signer Signer
		anchor any
	}{
		{"ES256", es, epub}, {"ESP256", esp, esppub}, {"EdDSA", ed, edpub},
		{"Ed25519", ed19, ed19pub}, {"HMAC256", hs, hmacKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uris := []string{"https://a.example/fw.bin", "https://b.example/fw.bin"}
			ub := time.Unix(1900000000, 0)
			env, err := Create(context.Background(), CreateOptions{
				Image: bytes.NewReader(img), VendorID: testVendor, ClassID: testClass,
				Seq: 42, URIs: uris, Component: "app", ChunkSize: 4096, UseBefore: ub,
			}, tc.signer)
			if err != nil {
				t.Fatal(err)
			}
			// A second, unrelated anchor first: several anchors are tried.
			other, _ := GenerateKey("ed25519", rand.Reader)
			m, err := Verify(env, TrustAnchors{other.Public(), tc.anchor})
			if err != nil {
				t.Fatal(err)
			}
			if m.Seq != 42 || !bytes.Equal(m.VendorID(), testVendor) || !bytes.Equal(m.ClassID(), testClass) {
				t.Fatalf("fields: seq %d vendor %x class %x", m.Seq, m.VendorID(), m.ClassID())
			}
			d, ok := m.ImageDigest()
			want := sha256.Sum256(img)
			if !ok || d.Alg != AlgSHA256 || !bytes.Equal(d.Bytes, want[:]) {
				t.Fatalf("image digest %x", d.Bytes)
			}
			if sz, _ := m.ImageSize(); sz != uint64(len(img)) {
				t.Fatalf("image size %d", sz)
			}
			if got := m.URIs(); len(got) != 2 || got[0] != uris[0] || got[1] != uris[1] {
				t.Fatalf("uris %v", got)
			}
			if u, ok := m.UseBefore(); !ok || u != uint64(ub.Unix()) {
				t.Fatalf("use-before %d", u)
			}
			table, err := schemas.BuildChunkTable(bytes.NewReader(img), 4096)
			if err != nil {
				t.Fatal(err)
			}
			td, err := table.Digest()
			if err != nil {
				t.Fatal(err)
			}
			ci, ok := m.ChunkInfo()
			if !ok || ci.ChunkSize != 4096 || !bytes.Equal(ci.TableDigest.Bytes, td[:]) {
				t.Fatalf("chunk info %+v, want table digest %x", ci, td)
			}
			if string(m.Components[0][0]) != "app" || len(m.Signatures) != 1 || !m.Signatures[0].Verified || m.Signatures[0].Anchor != 1 {
				t.Fatalf("components %v signatures %+v", m.Components, m.Signatures)
			}
			// Deterministic: the manifest part is identical on a second run.
			env2, _ := Create(context.Background(), CreateOptions{
				Image: bytes.NewReader(img), VendorID: testVendor, ClassID: testClass,
				Seq: 42, URIs: uris, Component: "app", ChunkSize: 4096, UseBefore: ub,
			}, tc.signer)
			m2, err := Verify(env2, TrustAnchors{tc.anchor})
			if err != nil || !bytes.Equal(m2.Raw(), m.Raw()) {
				t.Fatalf("second envelope: %v, manifests equal %v", err, err == nil && bytes.Equal(m2.Raw(), m.Raw()))
			}
		})
	}
}

func TestVerifyWrongKey(t *testing.T) {
	s, _ := mustSigner(t, "es256", ES256)
	env, err := Create(context.Background(), CreateOptions{Image: bytes.NewReader(testImage(100)), VendorID: testVendor, ClassID: testClass}, s)
	if err != nil {
		t.Fatal(err)
	}
	_, wrongEC := mustSigner(t, "es256", ES256)
	_, wrongEd := mustSigner(t, "ed25519", EdDSA)
	for _, anchors := range []TrustAnchors{nil, {wrongEC}, {wrongEd, HMACKey("0123456789abcdef0123456789abcdef")}} {
		if _, err := Verify(env, anchors); !errors.Is(err, ErrUntrusted) {
			t.Errorf("anchors %d: got %v, want ErrUntrusted", len(anchors), err)
		}
	}
	_ = ed25519.PublicKey(nil)
}

// TestCreateCanonical: the envelope, the manifest, its common block and its
// sequences are each in deterministic CBOR (decoding then re-encoding with
// schemas' encoder gives the same bytes).
func TestCreateCanonical(t *testing.T) {
	s, _ := mustSigner(t, "es256", ES256)
	env, err := Create(context.Background(), CreateOptions{
		Image: bytes.NewReader(testImage(3000)), VendorID: testVendor, ClassID: testClass,
		Seq: 1 << 40, URIs: []string{"a", "b", "c"}, Component: "c", UseBefore: time.Unix(2e9, 0),
	}, s)
	if err != nil {
		t.Fatal(err)
	}
	canon := func(what string, b []byte) map[any]any {
		t.Helper()
		var v any
		if err := schemas.TagDecMode().Unmarshal(b, &v); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		again, err := schemas.EncMode().Marshal(v)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("%s is not deterministic CBOR:\n got %x\nwant %x", what, b, again)
		}
		if tag, ok := v.(cbor.Tag); ok {
			v = tag.Content
		}
		m, _ := v.(map[any]any)
		return m
	}
	e := canon("envelope", env)
	m := canon("manifest", e[uint64(3)].([]byte))
	canon("authentication-wrapper", e[uint64(2)].([]byte))
	c := canon("common", m[uint64(3)].([]byte))
	canon("shared sequence", c[uint64(4)].([]byte))
	for _, k := range []uint64{7, 20} {
		b, ok := m[k].([]byte)
		if !ok {
			t.Fatalf("manifest member %d missing", k)
		}
		var seq any
		if err := schemas.TagDecMode().Unmarshal(b, &seq); err != nil {
			t.Fatal(err)
		}
		again, _ := schemas.EncMode().Marshal(seq)
		if !bytes.Equal(again, b) {
			t.Fatalf("sequence %d is not deterministic", k)
		}
	}
}

func TestCreateSeveralSigners(t *testing.T) {
	es, _ := mustSigner(t, "es256", ES256)
	ed, edPub := mustSigner(t, "ed25519", EdDSA)
	opts := CreateOptions{Image: bytes.NewReader(testImage(100)), VendorID: testVendor, ClassID: testClass}
	env, err := Create(context.Background(), opts, es, ed)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Verify(env, TrustAnchors{edPub})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Signatures) != 2 || m.Signatures[0].Verified || !m.Signatures[1].Verified {
		t.Fatalf("signatures %+v", m.Signatures)
	}
	// Too many blocks are refused before any is verified.
	signers := make([]Signer, MaxAuthBlocks+1)
	for i := range signers {
		signers[i] = ed
	}
	opts.Image = bytes.NewReader(testImage(100))
	env, err = Create(context.Background(), opts, signers...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(env, TrustAnchors{edPub}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d blocks: %v, want ErrTooLarge", len(signers), err)
	}
}
