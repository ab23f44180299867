package suit

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The firmware-encryption examples in testdata/encryption/ are libcsuit's
// (draft-ietf-suit-firmware-encryption-26; BSD-2-Clause,
// testdata/encryption/LICENSE), with the test keys its README gives.

var (
	// vecHMACKey authenticates expAW (COSE_Mac0).
	vecHMACKey = HMACKey(bytes.Repeat([]byte{'a'}, 32))
	// vecKEK is expAW's A128KW key-encryption key.
	vecKEK = KEK{KeyID: []byte("kid-1"), Key: bytes.Repeat([]byte{'a'}, 16)}
	// vecPlaintext is what both examples decrypt to.
	vecPlaintext = []byte("This is a real firmware image.")
)

// vecDeviceKey is expEW's device ECDH-ES key (P-256), checked against the
// public key the README gives.
func vecDeviceKey(t testing.TB) ECDHKey {
	t.Helper()
	k, err := ecdh.P256().NewPrivateKey(mustHex("60fe6dd6d85d5740a5349b6f91267eeac5ba81b8cb53ee249e4b4eb102c476b3"))
	if err != nil {
		t.Fatal(err)
	}
	pub := mustHex("04" + "5886cd61dd875862e5aaa820e7a15274c968a9bc96048ddcace32f50c3651ba3" +
		"9eed8125e932cd60c0ead3650d0a485cf726d378d1b016ed4298b2961e258f1b")
	if !bytes.Equal(k.PublicKey().Bytes(), pub) {
		t.Fatal("device key does not match the README's public key")
	}
	return ECDHKey{KeyID: []byte("kid-2"), Key: k}
}

type encVector struct {
	name    string
	anchors TrustAnchors
	keys    KeyUnwrapper
	sigAlg  Algorithm
	recip   Algorithm
	kid     string
}

func encVectors(t testing.TB) []encVector {
	return []encVector{
		{"suit_manifest_expAW", TrustAnchors{vecHMACKey}, vecKEK, HMAC256, A128KW, "kid-1"},
		{"suit_manifest_expEW", vectorAnchors(t), vecDeviceKey(t), ESP256, ECDHESA128KW, "kid-2"},
	}
}

// mdHex returns the "CBOR Binary in Hex" block of a vector's .md file.
func mdHex(t testing.TB, md string) []byte {
	t.Helper()
	_, after, ok := strings.Cut(md, "### CBOR Binary in Hex")
	if !ok {
		t.Fatal("no hex block")
	}
	parts := strings.SplitN(after, "~~~~", 3)
	if len(parts) < 3 {
		t.Fatal("hex block not fenced")
	}
	return mustHex(strings.Join(strings.Fields(parts[1]), ""))
}

// TestEncryptionVectors: both shared examples decode, authenticate and
// decrypt to the README's plaintext through the device's code path
// (Verify, then Processor.Update with the device's keys).
func TestEncryptionVectors(t *testing.T) {
	for _, v := range encVectors(t) {
		t.Run(v.name, func(t *testing.T) {
			env := readVector(t, "encryption/"+v.name+".suit")
			if md := mdHex(t, string(readVector(t, "encryption/"+v.name+".md"))); !bytes.Equal(md, env) {
				t.Fatal("the .suit differs from the .md's hex")
			}
			m, err := Verify(env, v.anchors)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(m.Signatures) != 1 || !m.Signatures[0].Verified || m.Signatures[0].Alg != v.sigAlg {
				t.Fatalf("signatures %+v", m.Signatures)
			}
			diag, err := parseEDN(string(readVector(t, "encryption/"+v.name+".diag")))
			if err != nil {
				t.Fatalf(".diag: %v", err)
			}
			checkSameEntries(t, diag, env)

			// The encryption info: A128GCM, one recipient, and it
			// re-encodes to the signed bytes.
			install, err := m.Sequence(SeqInstall)
			if err != nil {
				t.Fatal(err)
			}
			var info *EncryptionInfo
			for _, c := range install {
				if c.Params != nil && c.Params.EncryptionInfo != nil {
					info = c.Params.EncryptionInfo
				}
			}
			if info == nil {
				t.Fatal("no encryption info in install")
			}
			if info.Alg != A128GCM || len(info.IV) != 12 || len(info.Recipients) != 1 {
				t.Fatalf("info %+v", info)
			}
			r := info.Recipients[0]
			if r.Alg != v.recip || string(r.KeyID) != v.kid {
				t.Fatalf("recipient %s %q, want %s %q", encAlgName(r.Alg), r.KeyID, encAlgName(v.recip), v.kid)
			}
			if !bytes.Contains(env, install.encode()) {
				t.Fatal("re-encoded install sequence not found in the envelope")
			}

			f := newFake()
			if _, err := (Processor{Target: f, Keys: v.keys}).Update(context.Background(), m); err != nil {
				t.Fatalf("Update: %v", err)
			}
			if got := f.comps[0]; !bytes.Equal(got, vecPlaintext) {
				t.Fatalf("component 0 = %q, want %q", got, vecPlaintext)
			}
			if diff := cmp.Diff(f.calls, []string{"write 0", "commit 0 (30 bytes)"}); diff != "" {
				t.Errorf("calls (-got +want):\n%s", diff)
			}
		})
	}
}

// TestEncryptionVectorKDF pins the ECDH-ES key derivation against expEW:
// the HKDF context's AlgorithmID is the key wrap's (A128KW, -3), and its
// SuppPubInfo.other is the bstr "SUIT Payload Encryption"; with -29, or a
// tstr, the key does not unwrap.
func TestEncryptionVectorKDF(t *testing.T) {
	m, err := Verify(readVector(t, "encryption/suit_manifest_expEW.suit"), vectorAnchors(t))
	if err != nil {
		t.Fatal(err)
	}
	install, _ := m.Sequence(SeqInstall)
	var r *Recipient
	for _, c := range install {
		if c.Params != nil && c.Params.EncryptionInfo != nil {
			r = &c.Params.EncryptionInfo.Recipients[0]
		}
	}
	dev := vecDeviceKey(t)
	z, err := dev.Key.ECDH(r.Ephemeral)
	if err != nil {
		t.Fatal(err)
	}
	const wantCEK = "15f785b5c931414411b4b71373a9c0f7" // expAW's, unwrapped with kid-1
	kek, err := ecdhKEK(z, r.Alg, r.Protected)
	if err != nil {
		t.Fatal(err)
	}
	cek, err := unwrapKey(kek, r.WrappedKey, 16, r)
	if err != nil || hex.EncodeToString(cek) != wantCEK {
		t.Fatalf("CEK %x, %v", cek, err)
	}
	// The wrong readings of the context do not unwrap.
	for name, ctx := range map[string][]byte{
		"AlgorithmID -29": marshal([]any{int64(-29), []any{nil, nil, nil}, []any{nil, nil, nil}, []any{uint64(128), r.Protected, []byte(kdfOther)}}),
		"other as tstr":   marshal([]any{int64(-3), []any{nil, nil, nil}, []any{nil, nil, nil}, []any{uint64(128), r.Protected, kdfOther}}),
	} {
		k := hkdfSHA256(t, z, ctx, 16)
		if _, err := unwrapKey(k, r.WrappedKey, 16, r); err == nil {
			t.Errorf("%s: unwrapped", name)
		}
	}
}

func TestEncryptionInfoRoundTrip(t *testing.T) {
	for _, v := range encVectors(t) {
		m, err := Verify(readVector(t, "encryption/"+v.name+".suit"), v.anchors)
		if err != nil {
			t.Fatal(err)
		}
		install, _ := m.Sequence(SeqInstall)
		for _, c := range install {
			if c.Params == nil || c.Params.EncryptionInfo == nil {
				continue
			}
			raw := c.Params.EncryptionInfo.Encode()
			again, err := DecodeEncryptionInfo(raw)
			if err != nil {
				t.Fatalf("%s: %v", v.name, err)
			}
			// A copy without the received bytes encodes from its fields to
			// an equivalent structure.
			fresh := *again
			fresh.raw = nil
			for i := range fresh.Recipients {
				fresh.Recipients[i].raw = nil
			}
			built, err := DecodeEncryptionInfo(fresh.Encode())
			if err != nil {
				t.Fatalf("%s: re-encoded: %v", v.name, err)
			}
			if built.Alg != again.Alg || !bytes.Equal(built.IV, again.IV) || !bytes.Equal(built.Protected, again.Protected) ||
				len(built.Recipients) != 1 || !bytes.Equal(built.Recipients[0].WrappedKey, again.Recipients[0].WrappedKey) ||
				!bytes.Equal(built.Recipients[0].KeyID, again.Recipients[0].KeyID) {
				t.Fatalf("%s: re-encoded info differs: %+v", v.name, built)
			}
		}
	}
}

func hkdfSHA256(t testing.TB, z, info []byte, n int) []byte {
	t.Helper()
	k, err := hkdf.Key(sha256.New, z, nil, string(info), n)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
