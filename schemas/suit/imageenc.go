package suit

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Encrypted images, firmcast's way (issue 17 items 2 and 3). A device
// fetches an image in chunks, straight into its candidate slot, rather
// than streaming it through the Processor; so an encrypted image is
// described by firmcast's own parameter, ParamFirmcastEncryption, in the
// signed manifest, next to the chunk parameter:
//
//	firmcast-encryption = {
//	    1: SUIT_Encryption_Info,   ; COSE_Encrypt_Tagged, AES-CTR, detached
//	    2: bstr .size 40,          ; the plaintext's SHA-256, key-wrapped
//	}
//
// The manifest's image-digest, image-size and chunk table are those of
// the ciphertext: the image is named by its ciphertext digest on every
// topic, notice and store, and each chunk is checked against the signed
// table before it is decrypted (the draft's image match before
// decryption). The plaintext is authenticated by its SHA-256, which the
// manifest carries wrapped (RFC 3394 AES key wrap, 40 bytes) with a key
// derived from the content key (HKDF-SHA256, info PlaintextDigestInfo):
// signed, so the firmware signer vouches for the plaintext; wrapped, so
// the plaintext's SHA-256, which anyone holding a candidate image can
// compute, appears nowhere an eavesdropper sees it. A content key from
// anywhere else (a forged or swapped recipient) fails the wrap's integrity
// check, before anything is fetched; the right key yields the digest the
// device's bootloader checks the decrypted slot against before the image
// can boot (the one hash pass a plain install makes too).
//
// The info's recipients are the backend's escrow recipient (the content
// key wrapped with the publisher's own key, so the signed manifest keeps
// the key for devices that join a campaign later); each device's own
// recipient arrives in its signed notice (schemas.UpdateNotice.Key).

// PlaintextDigestInfo is the HKDF info that derives, from a content key,
// the key the plaintext digest is wrapped with.
const PlaintextDigestInfo = "firmcast plaintext digest v1"

// ImageEncryption is the value of ParamFirmcastEncryption.
type ImageEncryption struct {
	// Info is the content layer: AES-CTR (A128CTR or A256CTR), its
	// initial counter block, and the manifest's own recipients.
	Info *EncryptionInfo
	// PlaintextDigest is the plaintext's SHA-256 wrapped with the content
	// key's digest key (40 bytes): ContentCipher.SealDigest makes it,
	// ImageEncryption.OpenDigest recovers the digest.
	PlaintextDigest []byte
}

// Encode returns the parameter's value in deterministic CBOR (a bstr
// wrapping the map), as CreateOptions.Encryption puts it in a manifest.
func (e *ImageEncryption) Encode() []byte {
	inner := marshal(map[int64]any{1: cbor.RawMessage(e.Info.Encode()), 2: e.PlaintextDigest})
	return marshal(inner)
}

// DecodeImageEncryption decodes the value of ParamFirmcastEncryption. It
// refuses (ErrMalformed) anything but a bstr-wrapped map with a valid
// SUIT_Encryption_Info and a 40-byte wrapped digest; the algorithms are checked
// when a key is looked for (ContentCipher).
func DecodeImageEncryption(raw []byte) (*ImageEncryption, error) {
	const what = "firmcast-encryption"
	c, err := unwrap(raw, what)
	if err != nil {
		return nil, err
	}
	es, err := entries(c, what)
	if err != nil {
		return nil, err
	}
	e := &ImageEncryption{}
	for _, en := range es {
		k, _ := asInt(en.k)
		switch k {
		case 1:
			if e.Info, err = DecodeEncryptionInfo(en.v); err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
		case 2:
			b, ok := asBytes(en.v)
			if !ok || len(b) != sha256.Size+8 {
				return nil, fmt.Errorf("%w: %s: wrapped plaintext digest must be a 40-byte bstr", ErrMalformed, what)
			}
			e.PlaintextDigest = b
		default:
			return nil, fmt.Errorf("%w: %s: unknown key %s", ErrMalformed, what, keyString(en.k))
		}
	}
	if e.Info == nil || e.PlaintextDigest == nil {
		return nil, fmt.Errorf("%w: %s: needs keys 1 (encryption info) and 2 (plaintext digest)", ErrMalformed, what)
	}
	return e, nil
}

// ImageEncryption returns the manifest's encrypted-image parameter for
// component 0, whether it is set, and an error when it is set but
// malformed. It is read from the manifest's parameters only: a device
// never takes encryption info from anywhere else.
func (m *Manifest) ImageEncryption() (*ImageEncryption, bool, error) {
	raw, ok := m.ParamsFor(0).Other[ParamFirmcastEncryption]
	if !ok {
		return nil, false, nil
	}
	e, err := DecodeImageEncryption(raw)
	if err != nil {
		return nil, true, err
	}
	return e, true, nil
}

// ContentCipher finds the content key among the manifest's recipients
// and extra (the device's own, from its notice), with keys (the device's
// root of trust). Images are AES-CTR: another content algorithm is
// refused with ErrUnknownAlgorithm before any key is tried, as is an
// extra recipient of an unknown key-distribution algorithm. A key that
// unwraps but does not open the wrapped plaintext digest (another
// image's) is ErrKeyUnwrap. Other errors are those of the Processor's key
// search: ErrNoRecipient, ErrKeyUnwrap, ErrUnknownAlgorithm, or the
// KeyUnwrapper's.
func (e *ImageEncryption) ContentCipher(ctx context.Context, keys KeyUnwrapper, extra ...Recipient) (*ContentCipher, error) {
	if e.Info.Alg != A128CTR && e.Info.Alg != A256CTR {
		return nil, fmt.Errorf("%w: image content algorithm %s (want A128CTR or A256CTR)", ErrUnknownAlgorithm, encAlgName(e.Info.Alg))
	}
	for i := range extra {
		// The device's own recipient: an algorithm it cannot use is
		// unsupported, not merely someone else's.
		if r := &extra[i]; kekSize(r.Alg) == 0 || r.ephErr != nil {
			return nil, fmt.Errorf("%w: recipient %q: key distribution %s", ErrUnknownAlgorithm, r.KeyID, encAlgName(r.Alg))
		}
	}
	cc, err := findContentKey(ctx, keys, e.Info, extra)
	if err != nil {
		return nil, err
	}
	if _, err := e.OpenDigest(cc); err != nil {
		return nil, err
	}
	return cc, nil
}

// digestKey derives the key the plaintext digest is wrapped with.
func (c *ContentCipher) digestKey() []byte {
	k, err := hkdf.Key(sha256.New, c.key, nil, PlaintextDigestInfo, 16)
	if err != nil {
		panic("suit: HKDF-SHA256 of 16 bytes failed: " + err.Error()) // cannot happen: the length is fixed and small
	}
	return k
}

// SealDigest wraps the plaintext's SHA-256 (32 bytes) for
// ImageEncryption.PlaintextDigest.
func (c *ContentCipher) SealDigest(sum []byte) ([]byte, error) {
	if len(sum) != sha256.Size {
		return nil, fmt.Errorf("%w: plaintext digest of %d bytes", ErrParameter, len(sum))
	}
	k := c.digestKey()
	defer clear(k)
	return wrapKey(k, sum)
}

// OpenDigest returns the plaintext's SHA-256 that e carries, unwrapped
// with cc's digest key. A content key that is not the image's (another
// image's, from a forged or swapped recipient) fails the wrap's integrity
// check: ErrKeyUnwrap.
func (e *ImageEncryption) OpenDigest(cc *ContentCipher) ([]byte, error) {
	k := cc.digestKey()
	defer clear(k)
	d, err := unwrapKey(k, e.PlaintextDigest, sha256.Size, &Recipient{Alg: A128KW, KeyID: []byte("plaintext digest")})
	if err != nil {
		return nil, fmt.Errorf("%w (the content key is not this image's)", err)
	}
	return d, nil
}

// CTRKey returns copies of an AES-CTR cipher's content key and initial
// counter block, for a device that keeps the ciphertext in an encrypted
// slot and hands the key to its bootloader, which stores it only wrapped
// with a key of the device's root of trust (bootctl.SlotEncryption). GCM
// fails with ErrParameter.
func (c *ContentCipher) CTRKey() (key, iv []byte, err error) {
	if isGCM(c.alg) {
		return nil, nil, fmt.Errorf("%w: %s is not a counter mode", ErrParameter, encAlgName(c.alg))
	}
	return bytes.Clone(c.key), bytes.Clone(c.iv), nil
}

// XORAt writes to dst the AES-CTR transform of src (encryption and
// decryption are the same) for the bytes at payload offset offset: one
// chunk decrypted where it lands, in any order. dst and src may be the
// same slice; dst must be at least as long as src. GCM fails with
// ErrParameter.
func (c *ContentCipher) XORAt(dst, src []byte, offset uint64) error {
	if isGCM(c.alg) {
		return fmt.Errorf("%w: %s cannot be decrypted at an offset", ErrParameter, encAlgName(c.alg))
	}
	c.stream(offset).XORKeyStream(dst[:len(src)], src)
	return nil
}

// Encrypted deltas. A delta to an encrypted image holds the image's
// plaintext (the delta's literal bytes, and the target's digest in its
// header): it is encrypted too, as a payload of its own, with its own
// fresh content key and initial counter block (never the image's), and
// named by its ciphertext as the image is. DeltaInfo.Encryption carries
// its ImageEncryption: AES-CTR, one recipient that wraps the delta's
// content key (A128KW) with a key derived from the image's content key
// (HKDF-SHA256, info DeltaKeyInfo), and the delta's plaintext SHA-256
// wrapped as for an image. So the delta's key reaches exactly the devices
// the image's key reaches (each through its own wrapped key in its
// notice), with no second wrapped key per device, and a key derived for
// one purpose is used for no other.

// DeltaKeyInfo is the HKDF info that derives, from an image's content
// key, the key-encryption key its deltas' content keys are wrapped with.
const DeltaKeyInfo = "firmcast delta key v1"

// DeltaKeyID is the key id of a delta's recipient (its content key
// wrapped with the image's DeltaKEK).
const DeltaKeyID = "firmcast-image-key"

// DeltaKEK returns the key-encryption key (A128KW, DeltaKeyID) that wraps
// the content keys of deltas to the image c encrypts.
func (c *ContentCipher) DeltaKEK() KEK {
	k, err := hkdf.Key(sha256.New, c.key, nil, DeltaKeyInfo, 16)
	if err != nil {
		panic("suit: HKDF-SHA256 of 16 bytes failed: " + err.Error()) // cannot happen: the length is fixed and small
	}
	return KEK{KeyID: []byte(DeltaKeyID), Key: k}
}

// DeltaCipher returns the content cipher of an encrypted delta (e, from
// DeltaInfo.Encryption) to the image whose content cipher is img: the
// delta's key unwrapped with img.DeltaKEK, checked against the delta's
// wrapped plaintext digest. Errors: those of ContentCipher
// (ErrUnknownAlgorithm, ErrNoRecipient, ErrKeyUnwrap).
func (e *ImageEncryption) DeltaCipher(ctx context.Context, img *ContentCipher) (*ContentCipher, error) {
	kek := img.DeltaKEK()
	defer clear(kek.Key)
	return e.ContentCipher(ctx, kek)
}
