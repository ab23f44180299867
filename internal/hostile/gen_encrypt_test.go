package hostile

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"slices"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// deviceKEK is device A's key-encryption key for encrypted images (in
// its root of trust: the rig gives it to the agent as Config.Keys), and
// its key id as the publisher names it.
func deviceKEK(device string) suit.KEK {
	k := sha256.Sum256([]byte("firmcast hostile corpus kek " + device))
	return suit.KEK{KeyID: []byte(device + "#1"), Key: k[:16]}
}

// detRand is a deterministic randomness source for the corpus's content
// keys, IVs and ephemeral keys.
func detRand(label string) *bytes.Reader {
	s := sha256.Sum256([]byte("firmcast hostile corpus rand " + label))
	var b []byte
	for i := range 64 {
		s = sha256.Sum256(append(s[:], byte(i)))
		b = append(b, s[:]...)
	}
	return bytes.NewReader(b)
}

// encryptedCases adds the encrypted-image cases (issue 17): each is
// refused at its stage with the active image byte-identical. notice makes
// a notice signed by the campaign authority for an envelope and image.
func (c *corpus) encryptedCases(signer suit.Signer, v2 []byte, notice func(env, img []byte, mod func(*schemas.UpdateNotice)) []byte) {
	t := c.t
	ctx := context.Background()
	seal := func(label string) (ct []byte, cc *suit.ContentCipher, e *suit.ImageEncryption) {
		cc = must[*suit.ContentCipher](t)(suit.NewContentCipher(suit.A128CTR, detRand(label)))
		ct = must[[]byte](t)(cc.Seal(v2))
		sum := sha256.Sum256(v2)
		wd := must[[]byte](t)(cc.SealDigest(sum[:]))
		esc := must[*suit.Recipient](t)(cc.WrapFor(suit.KEK{KeyID: []byte("firmcast-escrow"), Key: bytes.Repeat([]byte{0xe5}, 16)}, nil))
		return ct, cc, &suit.ImageEncryption{Info: cc.Info(*esc), PlaintextDigest: wd}
	}
	ct, cc, e := seal("v2")
	imgFile := c.put("images/v2-encrypted.bin", ct)
	create := func(e *suit.ImageEncryption) []byte {
		return must[[]byte](t)(suit.Create(ctx, suit.CreateOptions{Image: bytes.NewReader(ct), VendorID: vendorID, ClassID: classID,
			Seq: 6, ChunkSize: chunkSize, Encryption: e}, signer))
	}
	env := create(e)
	wrap := func(cc *suit.ContentCipher, k suit.KeyWrapper, label string) []byte {
		return must[*suit.Recipient](t)(cc.WrapFor(k, detRand(label))).Encode()
	}
	mine := wrap(cc, deviceKEK(deviceID), "mine")
	withKey := func(key []byte) func(*schemas.UpdateNotice) {
		return func(n *schemas.UpdateNotice) { n.Key = key }
	}
	add := func(name, stage, code string, b []byte, serve bool, why string) {
		cs := Case{Name: name, Target: "notice", Stage: stage, Code: code, Signed: true, Why: why}
		if serve {
			cs.Serve = &Serve{Image: imgFile}
		}
		c.add(cs, b)
	}
	flip := func(b []byte, at []byte) []byte {
		i := bytes.Index(b, at)
		if i < 0 {
			t.Fatal("generator: bytes to flip not found")
		}
		b = slices.Clone(b)
		b[i] ^= 0x01
		return b
	}

	// Keys that are not this device's: refused when the content key is
	// looked for, before a chunk is fetched.
	wrongKEK := suit.KEK{KeyID: deviceKEK(deviceID).KeyID, Key: bytes.Repeat([]byte{0x99}, 16)}
	add("enc-wrong-kek", "agent:process", "unauthorized", notice(env, ct, withKey(wrap(cc, wrongKEK, "wrong"))), false,
		"the content key wrapped with a KEK that is not the device's, under the device's key id")
	ecSeed := sha256.Sum256([]byte("firmcast hostile corpus ecdh")) // ecdh's GenerateKey ignores custom readers
	ecPriv := must[*ecdh.PrivateKey](t)(ecdh.X25519().NewPrivateKey(ecSeed[:]))
	add("enc-wrong-device-key", "agent:process", "unauthorized",
		notice(env, ct, withKey(wrap(cc, suit.ECDHPublicKey{KeyID: deviceKEK(deviceID).KeyID, Key: ecPriv.PublicKey()}, "ecdh-wrap"))), false,
		"the content key wrapped by ECDH-ES to a key the device does not hold, under the device's key id")
	add("enc-key-for-other-device", "agent:process", "unauthorized", notice(env, ct, withKey(wrap(cc, deviceKEK(otherDevice), "other"))), false,
		"a genuine wrapped key for another device, in a notice for this one")
	add("enc-no-wrapped-key", "agent:process", "unauthorized", notice(env, ct, nil), false,
		"an encrypted image's notice without this device's wrapped key")
	unknown := suit.Recipient{Alg: -99, KeyID: deviceKEK(deviceID).KeyID, WrappedKey: must[*suit.Recipient](t)(suit.DecodeRecipient(mine)).WrappedKey}
	add("enc-unknown-algorithm", "agent:process", "unsupported", notice(env, ct, withKey(unknown.Encode())), false,
		"a wrapped key of an unknown key-distribution algorithm")
	gcm := &suit.ImageEncryption{Info: &suit.EncryptionInfo{Alg: suit.A128GCM, IV: make([]byte, 12), Recipients: e.Info.Recipients}, PlaintextDigest: e.PlaintextDigest}
	add("enc-unknown-content-algorithm", "agent:process", "unsupported", notice(create(gcm), ct, withKey(mine)), false,
		"an image content algorithm the device does not stream (AES-GCM)")

	// Tampering with the signed encryption parameter breaks the manifest's
	// signature.
	add("enc-tampered-iv", "agent:verify", "signature", notice(flip(env, e.Info.IV), ct, withKey(mine)), false,
		"the IV changed in the signed manifest")
	add("enc-tampered-tag", "agent:verify", "signature", notice(flip(env, e.PlaintextDigest), ct, withKey(mine)), false,
		"the wrapped plaintext digest (what authenticates the plaintext) changed in the signed manifest")
	add("enc-info-outside-manifest", "agent:verify", "unsupported", notice(withEnvelopeMember(t, env, 19, e.Info.Encode()), ct, withKey(mine)), false,
		"an encryption info as an envelope element, outside the signed manifest")

	// Swapped recipients: a well-formed key for this device, but another
	// image's content key: it does not open the signed wrapped plaintext
	// digest, refused before a chunk is fetched.
	_, otherCC, _ := seal("other")
	add("enc-swapped-recipients", "agent:process", "unauthorized", notice(env, ct, withKey(wrap(otherCC, deviceKEK(deviceID), "swapped"))), false,
		"the device's wrapped key of another image's content key")
	// Signed and wrapped with the right key, but the digest of other bytes:
	// the decrypted slot is never committed.
	wrongSum := sha256.Sum256([]byte("another image"))
	wrong := *e
	wrong.PlaintextDigest = must[[]byte](t)(cc.SealDigest(wrongSum[:]))
	add("enc-plaintext-digest-differs", "agent:fetch", "digest", notice(create(&wrong), ct, withKey(mine)), true,
		"a signed plaintext digest the decrypted image does not match: refused when the candidate is committed")
	// Tampered ciphertext: every chunk fails its table hash and is
	// dropped before it is decrypted.
	c.add(Case{Name: "enc-tampered-ciphertext", Target: "notice", Stage: "agent:fetch", Code: "bad-chunk", Signed: true,
		Serve: &Serve{Image: imgFile, Corrupt: true},
		Why:   "every ciphertext chunk arrives with a byte flipped: refused by the signed chunk table before any decryption"},
		notice(env, ct, withKey(mine)))
}

// withEnvelopeMember returns the envelope with one more member, key k
// holding bstr v: outside what the signature covers.
func withEnvelopeMember(t testing.TB, env []byte, k int, v []byte) []byte {
	var tagged cbor.Tag
	if err := cbor.Unmarshal(env, &tagged); err != nil {
		t.Fatal(err)
	}
	var m map[int]cbor.RawMessage
	if err := cbor.Unmarshal(must[[]byte](t)(cbor.Marshal(tagged.Content)), &m); err != nil {
		t.Fatal(err)
	}
	m[k] = enc(t, v)
	return enc(t, cbor.Tag{Number: tagged.Number, Content: m})
}
