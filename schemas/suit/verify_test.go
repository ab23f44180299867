package suit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"testing"

	"github.com/fxamacker/cbor/v2"
	cose "github.com/veraison/go-cose"
)

// TestVerifyByteFlips flips every byte of each vector (authentication
// wrapper, manifest and severed members) two ways; verification must fail.
func TestVerifyByteFlips(t *testing.T) {
	anchors := vectorAnchors(t)
	for _, f := range vectorFiles(t) {
		orig := readVector(t, f[len("testdata/"):])
		if _, err := Verify(orig, anchors); err != nil {
			t.Fatal(err)
		}
		env := bytes.Clone(orig)
		for i := range env {
			for _, x := range []byte{0x01, 0xff} {
				env[i] ^= x
				m, err := Verify(env, anchors)
				if err == nil {
					t.Errorf("%s: byte %d ^ %#x: verified (seq %d)", f, i, x, m.Seq)
				}
				env[i] ^= x
			}
		}
	}
}

// TestVerifyDistinctErrors: each failure gives its own sentinel.
func TestVerifyDistinctErrors(t *testing.T) {
	anchors := vectorAnchors(t)
	exp0 := readVector(t, "suit_manifest_exp0.suit")
	s, pub := mustSigner(t, "es256", ES256)
	signed := func(manifest []byte) []byte {
		env, err := seal(context.Background(), manifest, []Signer{s}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	// A manifest whose common map holds key 2 twice, correctly signed.
	dupManifest := marshal([]byte{0xa3, 0x01, 0x01, 0x02, 0x00, 0x02, 0x01})
	// An envelope map holding the manifest key twice.
	env := exp0[2:] // strip tag
	es, _ := entries(env, "")
	dupEnv := append([]byte{0xd8, 0x6b, 0xa3}, es[0].k...)
	dupEnv = append(dupEnv, es[0].v...)
	dupEnv = append(append(append(dupEnv, es[1].k...), es[1].v...), append(es[1].k, es[1].v...)...)
	// Same manifest, sequence number changed, old signature kept.
	tampered := bytes.Clone(exp0)
	i := bytes.Index(tampered, []byte{0x02, 0x00, 0x03, 0x58, 0x5f}) // seq 0, common
	tampered[i+1] = 0x05

	cases := []struct {
		name string
		env  []byte
		anc  TrustAnchors
		want error
	}{
		{"wrong key", exp0, TrustAnchors{pub}, ErrUntrusted},
		{"truncated", exp0[:len(exp0)-1], anchors, ErrTruncated},
		{"truncated in header", exp0[:3], anchors, ErrTruncated},
		{"duplicate envelope key", dupEnv, anchors, ErrDuplicateKey},
		{"duplicate manifest key", signed(dupManifest), TrustAnchors{pub}, ErrDuplicateKey},
		{"digest mismatch", tampered, anchors, ErrDigestMismatch},
		{"trailing bytes", append(bytes.Clone(exp0), 0), anchors, ErrMalformed},
		{"not an envelope", []byte{0xd8, 0x6c, 0xa0}, anchors, ErrMalformed},
		{"manifest version 2", signed(marshal([]byte{0xa1, 0x01, 0x02})), TrustAnchors{pub}, ErrUnsupported},
	}
	sentinels := []error{ErrUntrusted, ErrTruncated, ErrDuplicateKey, ErrDigestMismatch, ErrMalformed, ErrUnsupported, ErrSeveredDigest}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Verify(tc.env, tc.anc)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			for _, s := range sentinels {
				if s != tc.want && errors.Is(err, s) {
					t.Errorf("%v also matches %v", err, s)
				}
			}
		})
	}
	for n := 0; n < len(exp0); n++ {
		if _, err := Verify(exp0[:n], anchors); !errors.Is(err, ErrTruncated) {
			t.Errorf("prefix of %d bytes: %v, want ErrTruncated", n, err)
		}
	}
}

// TestCOSEInterop: blocks signed by go-cose verify here, and ours verify
// with go-cose (ES256 and EdDSA, the algorithms go-cose v1.3 knows).
func TestCOSEInterop(t *testing.T) {
	for _, alg := range []string{"es256", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			key, _ := GenerateKey(alg, nil)
			calg := cose.AlgorithmES256
			if alg == "ed25519" {
				calg = cose.AlgorithmEdDSA
			}
			manifest := marshal(marshal(map[int64]any{1: 1, 2: 7, 3: marshal(map[int64]any{2: [][][]byte{{{0}}}})}))
			digestItem := Digest{Alg: AlgSHA256, Bytes: sha256Sum(manifest)}.encode()

			// go-cose signs (detached payload), we verify.
			cs, err := cose.NewSigner(calg, key)
			if err != nil {
				t.Fatal(err)
			}
			msg := cose.NewSign1Message()
			msg.Headers.Protected.SetAlgorithm(calg)
			msg.Payload = digestItem
			if err := msg.Sign(nil, nil, cs); err != nil {
				t.Fatal(err)
			}
			msg.Payload = nil
			blk, err := msg.MarshalCBOR()
			if err != nil {
				t.Fatal(err)
			}
			env := marshal(cbor.Tag{Number: EnvelopeTag, Content: map[int64]any{
				2: marshal([]any{digestItem, blk}),
				3: cbor.RawMessage(manifest),
			}})
			if m, err := Verify(env, TrustAnchors{key.Public()}); err != nil || m.Seq != 7 {
				t.Fatalf("go-cose block: %v", err)
			}

			// We sign, go-cose verifies.
			s, _ := NewKeySigner(key, 0)
			ours, err := seal(context.Background(), manifest, []Signer{s}, nil)
			if err != nil {
				t.Fatal(err)
			}
			e, err := parseEnvelope(ours)
			if err != nil {
				t.Fatal(err)
			}
			var got cose.Sign1Message
			if err := got.UnmarshalCBOR(mustSplitAuth(t, ours)); err != nil {
				t.Fatal(err)
			}
			got.Payload = e.digestItem
			cv, err := cose.NewVerifier(calg, key.Public())
			if err != nil {
				t.Fatal(err)
			}
			if err := got.Verify(nil, cv); err != nil {
				t.Fatalf("go-cose rejects our block: %v", err)
			}
		})
	}
	_ = (*ecdsa.PublicKey)(nil)
}

// mustSplitAuth returns the first authentication block (bstr content).
func mustSplitAuth(t *testing.T, env []byte) []byte {
	_, body, _ := asTag(env)
	es, _ := entries(body, "")
	for _, e := range es {
		if k, _ := asInt(e.k); k == keyAuthentication {
			c, _ := asBytes(e.v)
			it, _ := items(c, "")
			blk, _ := asBytes(it[1])
			return blk
		}
	}
	t.Fatal("no auth")
	return nil
}

// TestFiveFailuresDistinct: wrong key, truncated envelope, duplicate map
// key, unknown command in a running sequence and rollback each give their
// own sentinel, and none matches another's.
func TestFiveFailuresDistinct(t *testing.T) {
	anchors := vectorAnchors(t)
	exp1 := readVector(t, "suit_manifest_exp1.suit")
	_, otherKey := mustSigner(t, "es256", ES256)
	es, _ := entries(exp1[2:], "")
	dup := append([]byte{0xd8, 0x6b, 0xa3}, es[0].k...)
	dup = append(append(dup, es[0].v...), es[1].k...)
	dup = append(append(append(dup, es[1].v...), es[1].k...), es[1].v...)

	got := map[error]error{}
	_, got[ErrUntrusted] = Verify(exp1, TrustAnchors{otherKey})
	_, got[ErrTruncated] = Verify(exp1[:len(exp1)/2], anchors)
	_, got[ErrDuplicateKey] = Verify(dup, anchors)
	m := signedManifest(t, 1, 1, nil, map[int64]Sequence{keyInstall: {{Label: 77, Raw: []byte{0x0f}}}}, nil)
	_, got[ErrUnknownCommand] = Processor{Target: newFake()}.Update(context.Background(), m)
	v, err := Verify(exp1, anchors)
	if err != nil {
		t.Fatal(err)
	}
	_, got[ErrRollback] = Processor{Target: newFake(), InstalledSeq: v.Seq + 1}.Update(context.Background(), v)
	for want, err := range got {
		if !errors.Is(err, want) {
			t.Errorf("got %v, want %v", err, want)
		}
		for other := range got {
			if other != want && errors.Is(err, other) {
				t.Errorf("%v also matches %v", err, other)
			}
		}
	}
}
