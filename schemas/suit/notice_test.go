package suit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/firmcast/firmcast/schemas"
)

// testNotice is a complete, unsigned notice carrying a real envelope.
func testNotice(t testing.TB) *schemas.UpdateNotice {
	t.Helper()
	s, _ := mustSigner(t, "ed25519", EdDSA)
	env, err := Create(context.Background(), CreateOptions{Image: bytes.NewReader(testImage(3000)), VendorID: testVendor, ClassID: testClass, Seq: 3}, s)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := Decode(env)
	d, _ := m.ImageDigest()
	return &schemas.UpdateNotice{
		V: schemas.Version, Campaign: "c-1", Target: "dev-1", Envelope: env, Image: d.Bytes, ChunkSize: DefaultChunkSize,
		Sources:  []schemas.SourceHint{{Kind: schemas.SourceBroker}, {Kind: schemas.SourceHTTP, URI: "https://cdn.example/fw", Cost: 3}},
		Deadline: 2e9, StartWindowMS: 500,
	}
}

// roundTrip encodes and decodes n as it crosses a broker.
func roundTrip(t testing.TB, n *schemas.UpdateNotice) *schemas.UpdateNotice {
	t.Helper()
	b, err := schemas.Encode(n)
	if err != nil {
		t.Fatal(err)
	}
	var out schemas.UpdateNotice
	if err := schemas.Decode(b, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// TestSignNotice: a notice signed by each algorithm verifies after the
// wire round trip, with the signing key only; a notice signed by several
// keys verifies with any of them.
func TestSignNotice(t *testing.T) {
	ctx := context.Background()
	hk := HMACKey(bytes.Repeat([]byte{9}, 32))
	hs, _ := NewHMACSigner(hk)
	type keyed struct {
		s   Signer
		pub any
	}
	var keys []keyed
	for _, a := range []struct {
		alg  string
		cose Algorithm
	}{{"es256", ES256}, {"es256", ESP256}, {"ed25519", EdDSA}, {"ed25519", Ed25519}} {
		s, pub := mustSigner(t, a.alg, a.cose)
		keys = append(keys, keyed{s, pub})
	}
	keys = append(keys, keyed{hs, hk})
	other, otherPub := mustSigner(t, "ed25519", EdDSA)
	for _, k := range keys {
		n := testNotice(t)
		if err := SignNotice(ctx, n, k.s); err != nil {
			t.Fatal(err)
		}
		got := roundTrip(t, n)
		sigs, err := VerifyNotice(got, TrustAnchors{otherPub, k.pub})
		if err != nil || len(sigs) != 1 || !sigs[0].Verified || sigs[0].Anchor != 1 || sigs[0].Alg != k.s.Algorithm() {
			t.Errorf("%v: %v %+v", k.s.Algorithm(), err, sigs)
		}
		if _, err := VerifyNotice(got, TrustAnchors{otherPub}); !errors.Is(err, ErrUntrusted) {
			t.Errorf("%v: verified by another key: %v", k.s.Algorithm(), err)
		}
	}
	n := testNotice(t)
	if err := SignNotice(ctx, n, other, keys[0].s); err != nil {
		t.Fatal(err)
	}
	for _, a := range []any{otherPub, keys[0].pub} {
		if _, err := VerifyNotice(roundTrip(t, n), TrustAnchors{a}); err != nil {
			t.Errorf("two signers, anchor %T: %v", a, err)
		}
	}
	if err := SignNotice(ctx, testNotice(t)); !errors.Is(err, ErrParameter) {
		t.Errorf("no signer: %v", err)
	}
}

// TestNoticeTampering: every field is covered. Changing any of them after
// signing (the campaign id, the target, the class flag, the envelope, the
// image, the hints, the deadline...) gives ErrDigestMismatch; a damaged
// signature gives ErrUntrusted; a damaged wrapper a shape error.
func TestNoticeTampering(t *testing.T) {
	s, pub := mustSigner(t, "ed25519", EdDSA)
	n := testNotice(t)
	if err := SignNotice(context.Background(), n, s); err != nil {
		t.Fatal(err)
	}
	anchors := TrustAnchors{pub}
	for _, c := range []struct {
		name string
		mod  func(n *schemas.UpdateNotice)
		want error
	}{
		{"campaign", func(n *schemas.UpdateNotice) { n.Campaign = "c-2" }, ErrDigestMismatch},
		{"target", func(n *schemas.UpdateNotice) { n.Target = "dev-2" }, ErrDigestMismatch},
		{"class target", func(n *schemas.UpdateNotice) { n.ClassTarget = true }, ErrDigestMismatch},
		{"envelope", func(n *schemas.UpdateNotice) { n.Envelope = append(bytes.Clone(n.Envelope[:len(n.Envelope)-1]), 0) }, ErrDigestMismatch},
		{"image", func(n *schemas.UpdateNotice) { n.Image = bytes.Repeat([]byte{1}, 32) }, ErrDigestMismatch},
		{"source hint", func(n *schemas.UpdateNotice) { n.Sources[1].URI = "http://evil.example/" }, ErrDigestMismatch},
		{"hint added", func(n *schemas.UpdateNotice) {
			n.Sources = append(n.Sources, schemas.SourceHint{Kind: schemas.SourceFile, URI: "/etc/shadow"})
		}, ErrDigestMismatch},
		{"deadline", func(n *schemas.UpdateNotice) { n.Deadline = 0 }, ErrDigestMismatch},
		{"start window", func(n *schemas.UpdateNotice) { n.StartWindowMS = 0 }, ErrDigestMismatch},
		{"chunk size", func(n *schemas.UpdateNotice) { n.ChunkSize = 1024 }, ErrDigestMismatch},
		{"signature byte", func(n *schemas.UpdateNotice) { n.Auth = bytes.Clone(n.Auth); n.Auth[len(n.Auth)-1] ^= 1 }, ErrUntrusted},
		{"digest byte", func(n *schemas.UpdateNotice) {
			n.Auth = bytes.Clone(n.Auth)
			n.Auth[bytes.Index(n.Auth, []byte{0x58, 0x20})+2] ^= 1
		}, ErrDigestMismatch},
		{"truncated wrapper", func(n *schemas.UpdateNotice) { n.Auth = n.Auth[:len(n.Auth)-3] }, ErrTruncated},
		{"wrapper without a block", func(n *schemas.UpdateNotice) { n.Auth = marshal([]any{marshal([]any{AlgSHA256, make([]byte, 32)})}) }, ErrMalformed},
		{"not CBOR", func(n *schemas.UpdateNotice) { n.Auth = []byte{0xff} }, ErrMalformed},
		{"missing", func(n *schemas.UpdateNotice) { n.Auth = nil }, ErrMalformed},
	} {
		m := *n
		m.Sources = append([]schemas.SourceHint(nil), n.Sources...)
		c.mod(&m)
		if _, err := VerifyNotice(&m, anchors); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := VerifyNotice(n, anchors); err != nil {
		t.Errorf("untouched: %v", err)
	}
}

// TestNoticeSignatureIsNotAManifestSignature: one key may sign notices and
// manifests (the server signer); the external_aad keeps the two apart. A
// wrapper made over a notice's bytes as a manifest is signed does not
// verify as the notice's, and a notice's wrapper does not authenticate an
// envelope whose manifest bytes it was moved onto.
func TestNoticeSignatureIsNotAManifestSignature(t *testing.T) {
	ctx := context.Background()
	s, pub := mustSigner(t, "ed25519", EdDSA)
	n := testNotice(t)
	b, _ := n.SignedBytes()
	asManifest, err := authenticate(ctx, b, nil, []Signer{s})
	if err != nil {
		t.Fatal(err)
	}
	n.Auth = asManifest
	if _, err := VerifyNotice(n, TrustAnchors{pub}); !errors.Is(err, ErrUntrusted) {
		t.Errorf("manifest-style signature over a notice: %v, want ErrUntrusted", err)
	}
	env, err := Create(ctx, CreateOptions{Image: bytes.NewReader(testImage(1000)), VendorID: testVendor, ClassID: testClass, Seq: 1}, s)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := Decode(env)
	asNotice, err := authenticate(ctx, m.Raw(), NoticeAAD, []Signer{s})
	if err != nil {
		t.Fatal(err)
	}
	forged := marshal(map[uint64]any{keyAuthentication: asNotice, keyManifest: cbor.RawMessage(m.Raw())})
	if _, err := Verify(forged, TrustAnchors{pub}); !errors.Is(err, ErrUntrusted) {
		t.Errorf("notice-style signature over a manifest: %v, want ErrUntrusted", err)
	}
}

// TestNoticeGolden pins the signed notice's bytes: Ed25519 is
// deterministic, so the same key and notice give the same signature.
func TestNoticeGolden(t *testing.T) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x5a}, 32))
	s, err := NewKeySigner(key, EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	n := &schemas.UpdateNotice{
		V: schemas.Version, Campaign: "c-1", Target: "dev-1", Envelope: []byte{0x01}, Image: bytes.Repeat([]byte{0xaa}, 32), ChunkSize: 1024,
	}
	if err := SignNotice(context.Background(), n, s); err != nil {
		t.Fatal(err)
	}
	b, err := schemas.Encode(n)
	if err != nil {
		t.Fatal(err)
	}
	// {0: 1, 1: "c-1", 2: "dev-1", 3: h'01', 7: h'aa..aa', 8: 1024,
	//  10: << [ << [-16, h'50bb..05e8'] >>,
	//           << 18([ << {1: -8} >>, {}, null, h'357e..710c' ]) >> ] >>}
	const want = "a700010163632d3102656465762d31034101075820aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" +
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa081904000a5873825824822f582050bbc7b1f8e2515d048855e78a58" +
		"437269a23e9ed895d5ea5e13b7d68ec305e8584ad28443a10127a0f65840357ebb199c29113198b21b801fe3" +
		"ba06ba8c49ba6f0e7b67a06a4b0749d972b16de557ea1e541b61c7e1013f94107d9397c9aac4d309a692545f" +
		"2f412af5710c"
	if got := hex.EncodeToString(b); got != want {
		t.Errorf("signed notice\n%s\nwant\n%s", got, want)
	}
	if _, err := VerifyNotice(n, TrustAnchors{key.Public()}); err != nil {
		t.Fatal(err)
	}
}

// FuzzVerifyNotice: decoding and verifying any notice never panics, and
// what verifies was signed by the test key over exactly its fields.
func FuzzVerifyNotice(f *testing.F) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x5a}, 32))
	s, _ := NewKeySigner(key, EdDSA)
	n := testNotice(f)
	if err := SignNotice(context.Background(), n, s); err != nil {
		f.Fatal(err)
	}
	good, _ := schemas.Encode(n)
	f.Add(good)
	n.Campaign = "c-2"
	tampered, _ := schemas.Encode(n)
	f.Add(tampered)
	anchors := TrustAnchors{key.Public()}
	f.Fuzz(func(t *testing.T, b []byte) {
		var n schemas.UpdateNotice
		if schemas.Decode(b, &n) != nil {
			return
		}
		if _, err := VerifyNotice(&n, anchors); err == nil {
			again, _ := schemas.Encode(&n)
			if !bytes.Equal(again, b) {
				t.Fatalf("verified notice does not re-encode to its bytes")
			}
		}
	})
}
